//! Limits shared by every replica: requests and tokens per minute and
//! calls in flight, per key and per route, counted in Redis when
//! `state.redis` is set, so N replicas behind one Service grant a key its
//! limit once and not N times.
//!
//! Redis stays off most calls' path: requests and tokens are spent from
//! small per-replica [`lease`]s refilled in the background, and only a call
//! that finds its lease empty waits for the store, never longer than
//! `state.redis.timeout`. Calls in flight are counted per replica under an
//! expiring heartbeat ([`redis::REPLICA_TTL`]), so a replica that dies
//! releases its calls' slots. Each replica's own local limits
//! ([`crate::stack::rate`], [`crate::stack::in_flight`]) stay in force all
//! the while: they never bind tighter than a shared limit a replica's calls
//! are part of, and they are what holds while the store is away under
//! `on_error: allow`.
//!
//! # Layout
//! - `redis`: the connection, the Lua scripts, up/down and the probe.
//! - `lease`: one replica's lease on one per-minute limit (pure arithmetic).
//! - this file: the limits of each key and route ([`SharedLimits`]), kept
//!   across reloads, the admission of a call and the [`Reservation`] it
//!   holds to its last token.

pub(crate) mod lease;
pub(crate) mod redis;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::chat::hold::{End, OnEnd};
use crate::config::{AuthConfig, CallerLimits, Config, OnStoreError, RedisConfig};
use crate::error::{ErrorKind, GatewayError, whole_seconds};
use lease::{Lease, Take};
use redis::Store;

/// How often idle leases are given back and the heartbeat renewed.
const UPKEEP_EVERY: Duration = Duration::from_millis(500);
/// Bytes of text per token, for counting what streamed when an upstream
/// reports no usage (as [`crate::stack::rate`] does).
const BYTES_PER_TOKEN: usize = 4;
/// What a caller refused because the store is away is told to wait.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shared limits of every key and route, and the store they are
/// counted in. Lives as long as the server: a reload swaps the limits
/// (`SharedLimits::apply`) and keeps the connection and the leases.
pub struct SharedLimits {
    /// The store.
    store: Arc<Store>,
    /// The limits in force.
    scopes: ArcSwap<Scopes>,
    /// Set when an in-flight release may not have reached the store (it
    /// failed, or the store was away): the next heartbeat re-asserts this
    /// replica's counts. Only then, as a re-assertion races with calls
    /// starting and ending on this replica.
    repair: Arc<AtomicBool>,
}

/// The keys and routes with limits.
#[derive(Default)]
struct Scopes {
    /// By key name.
    keys: HashMap<String, Arc<Scope>>,
    /// By every name a route answers to (aliases share their route's).
    routes: HashMap<String, Arc<Scope>>,
}

/// One key's or route's shared limits.
pub(crate) struct Scope {
    /// Who, for messages: `key 'a'` or `model 'demo'`.
    whose: String,
    /// What was configured; a reload keeps the scope while it is equal.
    limits: CallerLimits,
    /// Requests per minute, its bucket's key and this replica's lease.
    requests: Option<(String, Lease)>,
    /// Tokens per minute, likewise.
    tokens: Option<(String, Lease)>,
    /// Calls in flight: the key of the replicas' counts, the cap, and this
    /// replica's own count (what it re-asserts after an outage).
    in_flight: Option<(String, NonZeroU32, AtomicU32)>,
}

/// What an admitted call holds until its last token: the units it took
/// from leases (tokens settled by what it used) and its in-flight slots.
pub struct Reservation {
    /// Where releases go.
    store: Arc<Store>,
    /// Raised when a release fails.
    repair: Arc<AtomicBool>,
    /// Token reservations: the scope and how many were taken.
    tokens: Vec<(Arc<Scope>, u32)>,
    /// Request reservations, refunded only if the call is refused later in
    /// admission.
    requests: Vec<Arc<Scope>>,
    /// Scopes whose in-flight slot this call holds.
    in_flight: Vec<Arc<Scope>>,
    /// The prompt estimate the call was admitted on.
    estimate: u32,
    /// Text bytes streamed, for when no usage is reported.
    streamed_bytes: usize,
    /// Tokens the upstream reported, in and out.
    reported: Option<u32>,
}

/// Why admission stopped.
enum Stop {
    /// A shared limit is used up: the caller's answer.
    Refused(GatewayError),
    /// The store did not answer.
    Store,
}

// === impl SharedLimits ===

impl SharedLimits {
    /// Connects to the store `config` names and takes the limits of
    /// `limits`; starts the upkeep (needs a Tokio runtime).
    pub fn connect(config: &RedisConfig, limits: &Config) -> ::redis::RedisResult<Arc<Self>> {
        let shared = Arc::new(SharedLimits {
            store: Store::connect(config)?,
            scopes: ArcSwap::from_pointee(Scopes::default()),
            repair: Arc::new(AtomicBool::new(false)),
        });
        shared.apply(limits);
        tokio::spawn(upkeep(Arc::downgrade(&shared)));
        Ok(shared)
    }

    /// Takes the limits of a new routing file, keeping every scope (its
    /// lease and in-flight count) whose limits did not change; counts in
    /// Redis are named by key and route, so they carry over too.
    pub(crate) fn apply(&self, config: &Config) {
        let old = self.scopes.load_full();
        let prefix = |s: &str| self.store.key(s);
        let keep =
            |old: Option<&Arc<Scope>>, whose: String, name: String, limits: CallerLimits| match old
            {
                Some(old) if old.limits == limits && old.whose == whose => old.clone(),
                _ => Arc::new(Scope::new(whose, &prefix(&name), limits)),
            };
        let mut scopes = Scopes::default();
        if let AuthConfig::Keys(keys) = &config.auth {
            for key in keys.iter().filter(|k| !k.limits.is_unlimited()) {
                let scope = keep(
                    old.keys.get(&key.name),
                    format!("key '{}'", key.name),
                    format!("key:{}", key.name),
                    key.limits,
                );
                scopes.keys.insert(key.name.clone(), scope);
            }
        }
        for route in config.routes.iter().filter(|r| !r.limits.is_unlimited()) {
            let scope = keep(
                old.routes.get(&route.model),
                format!("model '{}'", route.model),
                format!("route:{}", route.model),
                route.limits,
            );
            for name in std::iter::once(&route.model).chain(&route.aliases) {
                scopes.routes.insert(name.clone(), scope.clone());
            }
        }
        self.scopes.store(Arc::new(scopes));
    }

    /// Admits a call by `key` (when it presented one) to `model`, whose
    /// prompt is estimated at `estimate` tokens: the key's limits first,
    /// then the route's, as the local limits are checked. `Ok(None)` when
    /// no shared limit applies, or the store is away under `allow`.
    pub async fn admit(
        &self,
        key: Option<&str>,
        model: &str,
        estimate: u32,
    ) -> Result<Option<Reservation>, GatewayError> {
        let scopes = self.scopes.load();
        let applying: Vec<Arc<Scope>> = key
            .and_then(|k| scopes.keys.get(k))
            .into_iter()
            .chain(scopes.routes.get(model))
            .cloned()
            .collect();
        drop(scopes);
        if applying.is_empty() {
            return Ok(None);
        }
        if !self.store.is_up() {
            return self.without_store();
        }
        let mut held = Reservation {
            store: self.store.clone(),
            repair: self.repair.clone(),
            tokens: Vec::new(),
            requests: Vec::new(),
            in_flight: Vec::new(),
            estimate,
            streamed_bytes: 0,
            reported: None,
        };
        for scope in applying {
            match self.admit_scope(&mut held, &scope, estimate).await {
                Ok(()) => {}
                Err(stop) => {
                    held.refund();
                    return match stop {
                        Stop::Refused(err) => Err(err),
                        Stop::Store => {
                            self.repair.store(true, Ordering::Relaxed);
                            self.without_store()
                        }
                    };
                }
            }
        }
        Ok(Some(held))
    }

    /// What a call meets while the store is away.
    fn without_store(&self) -> Result<Option<Reservation>, GatewayError> {
        match self.store.on_error() {
            OnStoreError::Allow => Ok(None),
            OnStoreError::Deny => Err(GatewayError::unavailable(
                "the shared limit store (Redis) is not answering and this gateway refuses \
                 calls it cannot count (state.redis.on_error: deny); retry shortly",
            )
            .with_retry_after(STORE_RETRY_AFTER)),
        }
    }

    /// One scope's requests, tokens and in-flight slot, added to `held`.
    async fn admit_scope(
        &self,
        held: &mut Reservation,
        scope: &Arc<Scope>,
        estimate: u32,
    ) -> Result<(), Stop> {
        if let Some((key, lease)) = &scope.requests {
            self.take(scope, key, lease, 1, "requests").await?;
            held.requests.push(scope.clone());
        }
        if let Some((key, lease)) = &scope.tokens {
            let charged = self.take(scope, key, lease, estimate, "tokens").await?;
            held.tokens.push((scope.clone(), charged));
        }
        if let Some((key, max, count)) = &scope.in_flight {
            if !self
                .store
                .take_in_flight(key, max.get())
                .await
                .map_err(|_| Stop::Store)?
            {
                return Err(Stop::Refused(
                    GatewayError::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "{} is at its limit of {max} calls in flight across all replicas; \
                             retry when one of its calls ends",
                            scope.whose
                        ),
                    )
                    .with_retry_after(STORE_RETRY_AFTER),
                ));
            }
            count.fetch_add(1, Ordering::Relaxed);
            held.in_flight.push(scope.clone());
        }
        Ok(())
    }

    /// Takes `n` units from `lease`, filling it from the bucket `key` when
    /// it is short; returns what was charged.
    async fn take(
        &self,
        scope: &Arc<Scope>,
        key: &str,
        lease: &Lease,
        n: u32,
        what: &str,
    ) -> Result<u32, Stop> {
        let charged = n.clamp(1, lease.limit().get());
        let (want, need) = match lease.take(n, Instant::now()) {
            Take::Taken { refill } => {
                if refill {
                    self.refill(scope.clone(), what == "tokens");
                }
                return Ok(charged);
            }
            Take::Short { want, need } => (want, need),
        };
        let grant = self
            .store
            .take(key, lease.limit().get(), i64::from(want), need)
            .await
            .map_err(|_| Stop::Store)?;
        lease.credit(grant.granted, Instant::now());
        match lease.take(n, Instant::now()) {
            Take::Taken { .. } => Ok(charged),
            Take::Short { .. } => {
                let wait = grant.wait.max(Duration::from_millis(1));
                Err(Stop::Refused(
                    GatewayError::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "{} is over its limit of {} {what} per minute across all \
                             replicas; retry in {}s",
                            scope.whose,
                            lease.limit(),
                            whole_seconds(wait)
                        ),
                    )
                    .with_retry_after(wait),
                ))
            }
        }
    }

    /// Tops up a lease running low, in the background: the call that
    /// noticed has already been served.
    fn refill(&self, scope: Arc<Scope>, tokens: bool) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let Some((key, lease)) = (if tokens {
                &scope.tokens
            } else {
                &scope.requests
            }) else {
                return;
            };
            match store
                .take(key, lease.limit().get(), i64::from(lease.size()), 1)
                .await
            {
                Ok(grant) => lease.credit(grant.granted, Instant::now()),
                Err(_) => lease.refill_failed(),
            }
        });
    }
}

/// Gives idle leases back, renews the heartbeat and, after releases the
/// store may have missed, re-asserts this replica's in-flight counts,
/// until the limits are dropped.
async fn upkeep(shared: Weak<SharedLimits>) {
    let mut ticks = tokio::time::interval(UPKEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat_every = (redis::REPLICA_TTL / 3).as_millis() / UPKEEP_EVERY.as_millis();
    let mut tick: u128 = 0;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.store.is_up() {
            shared.repair.store(true, Ordering::Relaxed);
            continue;
        }
        let scopes = shared.scopes.load_full();
        let mut seen: Vec<usize> = Vec::new();
        let all = scopes.keys.values().chain(scopes.routes.values());
        let heartbeat = tick.is_multiple_of(heartbeat_every.max(1));
        tick += 1;
        if heartbeat && shared.store.heartbeat().await.is_err() {
            continue;
        }
        let repair = heartbeat && shared.repair.swap(false, Ordering::Relaxed);
        for scope in all {
            // Aliases share their route's scope: once each.
            let id = Arc::as_ptr(scope) as usize;
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            for (key, lease) in scope.requests.iter().chain(&scope.tokens) {
                if let Some(balance) = lease.expire(Instant::now()) {
                    let limit = lease.limit().get();
                    if shared.store.take(key, limit, -balance, 0).await.is_err() {
                        lease.restore(balance);
                    }
                }
            }
            if repair && let Some((key, _, count)) = &scope.in_flight {
                let count = count.load(Ordering::Relaxed);
                if shared.store.set_in_flight(key, count).await.is_err() {
                    shared.repair.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

// === impl Scope ===

impl Scope {
    fn new(whose: String, key: &str, limits: CallerLimits) -> Scope {
        Scope {
            whose,
            limits,
            requests: limits
                .requests_per_minute
                .map(|n| (format!("{key}:rpm"), Lease::new(n))),
            tokens: limits
                .tokens_per_minute
                .map(|n| (format!("{key}:tpm"), Lease::new(n))),
            in_flight: limits
                .max_in_flight
                .map(|n| (format!("{key}:in_flight"), n, AtomicU32::new(0))),
        }
    }
}

// === impl Reservation ===

impl Reservation {
    /// Gives everything back: the call was refused after all.
    fn refund(&mut self) {
        let now = Instant::now();
        for scope in self.requests.drain(..) {
            if let Some((_, lease)) = &scope.requests {
                lease.refund(1, now);
            }
        }
        for (scope, charged) in self.tokens.drain(..) {
            if let Some((_, lease)) = &scope.tokens {
                lease.refund(charged, now);
            }
        }
        self.release_in_flight();
    }

    /// Frees this call's in-flight slots, here and (in the background) in
    /// the store; a release the store misses is repaired by the next
    /// heartbeat's count.
    fn release_in_flight(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for scope in self.in_flight.drain(..) {
            let Some((_, _, count)) = &scope.in_flight else {
                continue;
            };
            count.fetch_sub(1, Ordering::Relaxed);
            let store = self.store.clone();
            let repair = self.repair.clone();
            runtime.spawn(async move {
                if let Some((key, _, _)) = &scope.in_flight
                    && store.release_in_flight(key).await.is_err()
                {
                    repair.store(true, Ordering::Relaxed);
                }
            });
        }
    }
}

impl Drop for Reservation {
    /// Settles the tokens by what the call used (reported, else estimated
    /// from what streamed) and frees its slots.
    fn drop(&mut self) {
        let streamed =
            u32::try_from(self.streamed_bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX);
        let used = self
            .reported
            .unwrap_or_else(|| self.estimate.saturating_add(streamed));
        let now = Instant::now();
        for (scope, charged) in self.tokens.drain(..) {
            if let Some((_, lease)) = &scope.tokens {
                lease.settle(charged, used, now);
            }
        }
        self.release_in_flight();
    }
}

impl OnEnd for Reservation {
    fn on_token(&mut self, text: &str) {
        self.streamed_bytes += text.len();
    }

    fn on_end(mut self, end: End<'_>) {
        if let End::Finished(completion) = end {
            self.reported = completion
                .usage
                .map(|u| u.input_tokens.saturating_add(u.output_tokens));
        }
    }
}
