//! The access policy calls are checked against: which keys exist and what
//! each may call, the limits of each key and route, and how much one
//! request may hold.
//!
//! Like the routing table it is built whole from a validated config and
//! swapped whole on reload ([`SharedGuard`]); each layer loads it once per
//! call. What a reload must not reset is carried over: a key or route whose
//! limits did not change keeps its rate limiter and its in-flight count, so
//! editing an unrelated route does not hand every caller a fresh minute of
//! quota, and calls in flight stay counted. A key is matched by its name,
//! so rotating its secret keeps its quota too.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use futures_util::future::{Either, Ready, ready};
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use super::bucket::TokenBucket;
use crate::chat::hold::{Hold, HoldOnReady, OnEnd};
use crate::chat::{CallContext, Caller, ChatRequest};
use crate::config::{AuthConfig, CallerLimits, Config, KeyDigest, ModelGrant};
use crate::error::{ErrorKind, GatewayError};
use crate::route::RoutingTable;

/// The policy in force, swapped whole on reload.
pub(crate) type SharedGuard = Arc<ArcSwap<Guard>>;

/// The layer of each guarding concern: it gives the service it wraps the
/// policy in force. `K` names the concern (`GuardLayer<Authenticate>` is
/// the [`AuthLayer`](super::auth::AuthLayer)), so each concern is its own
/// `Foo<S>` and `FooLayer` while the wiring is written once.
pub(crate) struct GuardLayer<K> {
    /// The policy in force.
    guard: SharedGuard,
    _kind: PhantomData<fn() -> K>,
}

/// A service wrapped by a [`GuardLayer`]: it admits each call by `K`'s
/// [`Admission`] before the rest of the stack sees it.
pub(crate) struct Guarded<K, S> {
    /// The rest of the stack.
    inner: S,
    /// The policy in force; loaded once per call.
    guard: SharedGuard,
    _kind: PhantomData<fn() -> K>,
}

/// One guarding concern: whether a call may go on, and what it holds
/// until its last token if it does.
pub(crate) trait Admission: 'static {
    /// Held by an admitted call until its stream ends: permits, a pending
    /// settlement. Released with the stream's end (or with the error, when
    /// the call fails before streaming), by the one end-of-stream holder.
    type Held: OnEnd;

    /// Refuses the call with the error its caller should see, or admits
    /// it, possibly changing it (the auth layer names the caller's key).
    fn admit(guard: &Arc<Guard>, req: &mut ChatRequest)
    -> Result<Option<Self::Held>, GatewayError>;
}

/// An immutable snapshot of who may call and how much.
pub(crate) struct Guard {
    /// Whether callers must present a known key.
    keys_required: bool,
    /// Keys by the digest of their secret: a presented key is hashed and
    /// looked up, so the gateway never holds a key in clear text, and
    /// timing reveals nothing usable (only how a digest compares).
    keys: HashMap<KeyDigest, Arc<KeyPolicy>>,
    /// The same keys by name, for the layers after authentication.
    by_name: HashMap<Arc<str>, Arc<KeyPolicy>>,
    /// Every routed name (models and aliases) of a route with limits, to
    /// that route's quota, so every alias draws on the same one.
    routes: HashMap<String, Arc<Quota>>,
    /// What one request may hold.
    pub request: RequestShape,
    /// Calls in flight in the whole gateway, when capped.
    pub in_flight: Option<Arc<Capacity>>,
    /// The routing table published with this policy, so a call pinned to
    /// one snapshot routes by the file its keys came from; `None` for a
    /// policy built on its own (unit tests). Weak, so the policy a call
    /// holds to its end does not keep a replaced table (and its removed
    /// upstreams) alive: the live table holds it, and a pinned call until
    /// the router takes it.
    table: Option<Weak<RoutingTable>>,
}

/// One declared key.
pub(crate) struct KeyPolicy {
    /// Its name in the routing file; stands in for it everywhere.
    pub name: Arc<str>,
    /// The models it may call.
    pub models: ModelGrant,
    /// Its own limits.
    pub quota: Arc<Quota>,
    /// Its calls' class in route queues.
    pub priority: crate::config::Priority,
    /// Whether its callers may choose their class per call.
    pub priority_header: bool,
}

/// The limits of one key or route, with the state that enforces them.
pub(crate) struct Quota {
    /// What was configured; a reload keeps this quota while it is equal.
    limits: CallerLimits,
    /// Calls per minute.
    pub requests: Option<TokenBucket>,
    /// Tokens per minute.
    pub tokens: Option<TokenBucket>,
    /// Calls in flight.
    pub in_flight: Option<Arc<Capacity>>,
}

/// A cap on calls in flight: permits held until each call's last token.
pub(crate) struct Capacity {
    /// The cap, for messages and for carrying it over a reload.
    pub max: u32,
    /// One permit per call in flight.
    pub permits: Arc<Semaphore>,
}

/// Limits on the content of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestShape {
    /// Most messages.
    pub max_messages: u32,
    /// Most bytes of message content, when limited.
    pub max_content_length: Option<usize>,
}

// === impl GuardLayer ===

impl<K> GuardLayer<K> {
    /// Guards calls with the policy in `guard`.
    pub(crate) fn new(guard: SharedGuard) -> Self {
        GuardLayer {
            guard,
            _kind: PhantomData,
        }
    }
}

impl<K> Clone for GuardLayer<K> {
    fn clone(&self) -> Self {
        GuardLayer::new(self.guard.clone())
    }
}

impl<K, S> Layer<S> for GuardLayer<K> {
    type Service = Guarded<K, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.guard.clone(),
            _kind: PhantomData,
        }
    }
}

// === impl Guarded ===

impl<K, S: Clone> Clone for Guarded<K, S> {
    fn clone(&self) -> Self {
        Guarded {
            inner: self.inner.clone(),
            guard: self.guard.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K, S> Service<ChatRequest> for Guarded<K, S>
where
    K: Admission,
    S: Service<ChatRequest, Error = GatewayError>,
    S::Response: Hold,
{
    /// The inner stream holding what was admitted, unboxed: consecutive
    /// guarding layers share one holder (see [`crate::chat::hold`]).
    type Response = <S::Response as Hold>::Holding<Option<K::Held>>;
    type Error = GatewayError;
    type Future =
        Either<Ready<Result<Self::Response, GatewayError>>, HoldOnReady<S::Future, K::Held>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ChatRequest) -> Self::Future {
        let held = match K::admit(&pin(&req.call, &self.guard), &mut req) {
            Ok(held) => held,
            Err(err) => return Either::Left(ready(Err(err))),
        };
        Either::Right(HoldOnReady::new(self.inner.call(req), held))
    }
}

/// The snapshot `call` is served under: the one pinned to it already
/// (by the edge, or an outer layer), else the policy in force now, pinned
/// with its routing table so every later layer and the router read the
/// same one. Keys and routes therefore come from one reload, however many
/// reloads happen while the call passes the stack.
///
/// The router takes the table off the call (so a call in flight does not
/// keep a replaced table alive); the policy stays pinned to the call's end.
pub(crate) fn pin(call: &CallContext, shared: &SharedGuard) -> Arc<Guard> {
    if let Some(guard) = call.pinned::<Guard>() {
        return guard;
    }
    let mut guard = shared.load_full();
    // A policy's table is gone only if a reload replaced both since the
    // load; the next load finds the new pair. Bounded: with reloads that
    // fast, the router's own load of the live table is as good.
    for _ in 0..3 {
        match guard.table.as_ref().map(Weak::upgrade) {
            None => break,
            Some(Some(table)) => {
                call.pin(table);
                break;
            }
            Some(None) => guard = shared.load_full(),
        }
    }
    call.pin(guard.clone());
    guard
}

// === impl Guard ===

impl Guard {
    /// Builds the policy for `config`, keeping the limiters and in-flight
    /// counts of `previous` wherever their limits did not change.
    pub(crate) fn build(config: &Config, previous: Option<&Guard>) -> Guard {
        let keep = |old: Option<&Arc<Quota>>, limits: CallerLimits| match old {
            Some(old) if old.limits == limits => old.clone(),
            _ => Arc::new(Quota::new(limits)),
        };
        let mut keys = HashMap::new();
        let mut by_name = HashMap::new();
        if let AuthConfig::Keys(declared) = &config.auth {
            for key in declared {
                let old = previous.and_then(|g| g.by_name.get(key.name.as_str()));
                let policy = Arc::new(KeyPolicy {
                    name: Arc::from(key.name.as_str()),
                    models: key.models.clone(),
                    quota: keep(old.map(|k| &k.quota), key.limits),
                    priority: key.priority,
                    priority_header: key.priority_header,
                });
                keys.insert(key.digest, policy.clone());
                by_name.insert(policy.name.clone(), policy);
            }
        }
        let mut routes = HashMap::new();
        for route in config.routes.iter().filter(|r| !r.limits.is_unlimited()) {
            let old = previous.and_then(|g| g.routes.get(&route.model));
            let quota = keep(old, route.limits);
            for name in std::iter::once(&route.model).chain(&route.aliases) {
                routes.insert(name.clone(), quota.clone());
            }
        }
        let in_flight = config.limits.max_in_flight.map(|max| {
            match previous.and_then(|g| g.in_flight.as_ref()) {
                Some(old) if old.max == max.get() => old.clone(),
                _ => Arc::new(Capacity::new(max)),
            }
        });
        Guard {
            keys_required: matches!(config.auth, AuthConfig::Keys(_)),
            keys,
            by_name,
            routes,
            request: RequestShape {
                max_messages: config.limits.max_messages,
                max_content_length: config.limits.max_content_length,
            },
            in_flight,
            table: None,
        }
    }

    /// The policy, published with the routing table it goes with: a call
    /// pinned to it routes by `table` (see [`pin`]).
    pub(crate) fn serving(mut self, table: &Arc<RoutingTable>) -> Guard {
        self.table = Some(Arc::downgrade(table));
        self
    }

    /// A shared handle on the policy for `config`.
    #[cfg(test)]
    pub(crate) fn shared(config: &Config) -> SharedGuard {
        Arc::new(ArcSwap::from_pointee(Guard::build(config, None)))
    }

    /// Who `caller` is: `Ok(None)` when keys are not required, the key's
    /// policy when it presented a known key, UNAUTHENTICATED otherwise.
    /// Messages never repeat what the caller sent.
    pub(crate) fn authenticate(
        &self,
        caller: &Caller,
    ) -> Result<Option<Arc<KeyPolicy>>, GatewayError> {
        if !self.keys_required {
            return Ok(None);
        }
        let unauthenticated = |message: &str| {
            Err(GatewayError::new(
                ErrorKind::Unauthenticated,
                message.to_string(),
            ))
        };
        match caller {
            Caller::Anonymous => unauthenticated(
                "this gateway needs an API key: send it as `authorization: Bearer <key>` \
                 metadata",
            ),
            Caller::Unreadable => unauthenticated(
                "the authorization metadata must be `Bearer <key>`; no other scheme is \
                 accepted",
            ),
            Caller::Presented(key) => {
                match self.keys.get(&KeyDigest::of(key.expose().as_bytes())) {
                    Some(policy) => Ok(Some(policy.clone())),
                    None => unauthenticated(
                        "the API key is not valid for this gateway; check it, or ask the \
                     gateway's operators for one",
                    ),
                }
            }
            Caller::Key(name) => match self.by_name.get(name) {
                Some(policy) => Ok(Some(policy.clone())),
                None => unauthenticated("the API key was withdrawn; ask for a new one"),
            },
        }
    }

    /// The policy of the key a call was authenticated with.
    pub(crate) fn key(&self, caller: &Caller) -> Option<&Arc<KeyPolicy>> {
        self.by_name.get(caller.key_name()?)
    }

    /// Whether any route has limits of its own.
    pub(crate) fn limits_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// The quota of the route `model` names, if the route has limits.
    pub(crate) fn route(&self, model: &str) -> Option<&Arc<Quota>> {
        self.routes.get(model)
    }
}

// === impl KeyPolicy ===

impl KeyPolicy {
    /// PERMISSION_DENIED unless the key may call `model`.
    pub(crate) fn authorize(&self, model: &str) -> Result<(), GatewayError> {
        if self.models.allows(model) {
            return Ok(());
        }
        Err(GatewayError::new(
            ErrorKind::PermissionDenied,
            format!(
                "key '{}' may not call model '{model}'; it may call: {}. Ask the gateway's \
                 operators to extend its models",
                self.name, self.models
            ),
        ))
    }
}

// === impl Quota ===

impl Quota {
    /// Fresh limiters for `limits`.
    pub(crate) fn new(limits: CallerLimits) -> Quota {
        Quota {
            limits,
            requests: limits.requests_per_minute.map(TokenBucket::per_minute),
            tokens: limits.tokens_per_minute.map(TokenBucket::per_minute),
            in_flight: limits.max_in_flight.map(|n| Arc::new(Capacity::new(n))),
        }
    }
}

// === impl Capacity ===

impl Capacity {
    /// Room for `max` calls.
    pub(crate) fn new(max: NonZeroU32) -> Capacity {
        Capacity {
            max: max.get(),
            permits: Arc::new(Semaphore::new(max.get() as usize)),
        }
    }
}

/// Policies for the guarding layers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The policy of a routing file with `head` before its upstreams and
    /// `route_extra` under the route `demo` (a second route, `other`, has
    /// no limits).
    pub(crate) fn policy(head: &[&str], route_extra: &[&str]) -> SharedGuard {
        let mut lines = head.to_vec();
        lines.extend([
            "upstreams:",
            "  local:",
            "    kind: sim",
            "routes:",
            "  - model: demo",
            "    pools:",
            "      - upstream: local",
        ]);
        lines.extend(route_extra);
        lines.extend(["  - model: other", "    pools:", "      - upstream: local"]);
        let text = lines.join("\n");
        let env = |name: &str| (name == "SEARCH_KEY").then(|| "sk-search-0123456789".to_string());
        match Config::parse(&text, "routing.yaml", &env) {
            Ok(config) => Guard::shared(&config),
            Err(err) => panic!("test policy rejected:\n{err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt, service_fn};

    use super::testing::policy;
    use super::*;
    use crate::balance::Connectors;
    use crate::chat::ChatStream;
    use crate::chat::testing::request;
    use crate::stack::auth::AuthLayer;

    const SEARCH: &str = "    - { name: search, env: SEARCH_KEY, models: [\"*\"] }";
    const RENAMED: &str = "    - { name: renamed, env: SEARCH_KEY, models: [\"*\"] }";

    /// The auth layer over a stub that answers with an empty stream.
    async fn admitted(guard: &SharedGuard, req: ChatRequest) -> Result<(), GatewayError> {
        let stub = service_fn(|_req: ChatRequest| async {
            Ok::<ChatStream, GatewayError>(Box::pin(futures_util::stream::empty()))
        });
        AuthLayer::new(guard.clone())
            .layer(stub)
            .oneshot(req)
            .await
            .map(drop)
    }

    fn by_search() -> ChatRequest {
        let mut req = request("demo");
        req.caller = Caller::Key("search".into());
        req
    }

    #[tokio::test]
    async fn a_call_keeps_the_policy_it_was_pinned_to_across_a_reload() {
        let live = policy(&["auth:", "  keys:", SEARCH], &[]);
        let pinned = by_search();
        pin(&pinned.call, &live);
        // A reload renames the key while the call is on its way.
        live.store(policy(&["auth:", "  keys:", RENAMED], &[]).load_full());
        assert_eq!(admitted(&live, pinned).await, Ok(()));
        let err = admitted(&live, by_search())
            .await
            .expect_err("a new call sees the reload");
        assert_eq!(
            err.message(),
            "the API key was withdrawn; ask for a new one"
        );
    }

    #[tokio::test]
    async fn pinning_a_policy_pins_the_routing_table_published_with_it() {
        let text = "upstreams:\n  local:\n    kind: sim\nroutes:\n  - model: demo\n    pools:\n      - upstream: local\n";
        let config = Config::parse(text, "routing.yaml", &|_| None).expect("valid");
        let table =
            Arc::new(RoutingTable::build(&config, &Connectors::default()).expect("a table"));
        let live: SharedGuard = Arc::new(ArcSwap::from_pointee(
            Guard::build(&config, None).serving(&table),
        ));
        let call = CallContext::default();
        let guard = pin(&call, &live);
        let pinned = call
            .take_pinned::<RoutingTable>()
            .expect("the table is pinned");
        assert!(Arc::ptr_eq(&pinned, &table));
        assert!(Arc::ptr_eq(
            &guard,
            &call.pinned::<Guard>().expect("and the policy")
        ));
        live.store(Arc::new(Guard::build(&config, None)));
        assert!(
            Arc::ptr_eq(&pin(&call, &live), &guard),
            "a second pin keeps the first snapshot"
        );
    }
}
