//! [`RoutingFile`]: a routing file assembled from the skeleton every test
//! needs, so a test writes only the fragment it is about.

/// A routing file: the skeleton (one simulated upstream `local`, one route
/// `demo` to it) with a test's fragments added or put in place of the
/// skeleton's.
///
/// The text comes out in a fixed layout, so positions can be read off:
/// the head (top-level sections such as `listen:`, `auth:`, `limits:`,
/// `state:`) from line 1, then `upstreams:` (each upstream's name on its
/// own line, its fields under it indented by four), then `routes:` (each
/// `  - model: name` line, the route's fields under it indented by four).
/// Fields are given as the test would read them under their parent: one
/// string per line, nested lines indented relative to the first.
#[derive(Debug, Clone)]
pub(super) struct RoutingFile {
    /// Top-level lines before `upstreams:`.
    head: Vec<String>,
    /// Upstreams in file order: name, and the lines of its fields.
    upstreams: Vec<(String, Vec<String>)>,
    /// Routes in file order: model, and the lines of its other fields.
    routes: Vec<(String, Vec<String>)>,
    /// The text of the above, kept in step by every method so the file
    /// can be handed to the parse helpers as it is.
    text: String,
}

impl RoutingFile {
    /// The skeleton: upstream `local` of kind sim, route `demo` to it.
    pub(super) fn new() -> RoutingFile {
        RoutingFile::with_upstream("local", &["kind: sim"])
    }

    /// The skeleton with its one upstream named `name` and defined by
    /// `fields`, the route `demo` going to it.
    pub(super) fn with_upstream(name: &str, fields: &[&str]) -> RoutingFile {
        RoutingFile {
            head: Vec::new(),
            upstreams: vec![(name.to_string(), owned(fields))],
            routes: vec![(
                "demo".to_string(),
                vec!["pools:".to_string(), format!("  - upstream: {name}")],
            )],
            text: String::new(),
        }
        .rendered()
    }

    /// `lines` as the top of the file (`lines[0]` is line 1).
    pub(super) fn head(mut self, lines: &[&str]) -> RoutingFile {
        self.head = owned(lines);
        self.rendered()
    }

    /// Upstream `name` defined by `fields`: in place of one of that name,
    /// or after the others.
    pub(super) fn upstream(mut self, name: &str, fields: &[&str]) -> RoutingFile {
        put(&mut self.upstreams, name, owned(fields));
        self.rendered()
    }

    /// Route `model` with `fields` (its pools among them): in place of one
    /// for that model, or after the others.
    pub(super) fn route(mut self, model: &str, fields: &[&str]) -> RoutingFile {
        put(&mut self.routes, model, owned(fields));
        self.rendered()
    }

    /// `fields` added at the end of the first route (after its pools).
    pub(super) fn under_route(mut self, fields: &[&str]) -> RoutingFile {
        if let Some((_, lines)) = self.routes.first_mut() {
            lines.extend(owned(fields));
        }
        self.rendered()
    }

    /// The file's text.
    pub(super) fn text(&self) -> String {
        self.text.clone()
    }

    /// `self` with its text written out again.
    fn rendered(mut self) -> RoutingFile {
        let mut out = String::new();
        let mut line = |text: &str| {
            out.push_str(text);
            out.push('\n');
        };
        for text in &self.head {
            line(text);
        }
        line("upstreams:");
        for (name, fields) in &self.upstreams {
            line(&format!("  {name}:"));
            for field in fields {
                line(&format!("    {field}"));
            }
        }
        line("routes:");
        for (model, fields) in &self.routes {
            line(&format!("  - model: {model}"));
            for field in fields {
                line(&format!("    {field}"));
            }
        }
        self.text = out;
        self
    }
}

impl AsRef<str> for RoutingFile {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

fn owned(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| line.to_string()).collect()
}

/// Replaces the entry named `name` in `entries`, or appends one.
fn put(entries: &mut Vec<(String, Vec<String>)>, name: &str, lines: Vec<String>) {
    match entries.iter_mut().find(|(existing, _)| existing == name) {
        Some((_, old)) => *old = lines,
        None => entries.push((name.to_string(), lines)),
    }
}

#[test]
fn the_skeleton_is_the_smallest_valid_file_laid_out_as_documented() {
    let text = RoutingFile::new().text();
    assert_eq!(
        text,
        "upstreams:\n  local:\n    kind: sim\nroutes:\n  - model: demo\n    pools:\n      - upstream: local\n"
    );
    super::parse_ok(&text);
    let built = RoutingFile::with_upstream("up", &["kind: sim", "sim:", "  ttft: 0s"])
        .head(&["limits:", "  max_messages: 4"])
        .upstream("other", &["kind: sim"])
        .route("big", &["pools: [{ upstream: other }]"])
        .under_route(&["limits: { max_in_flight: 2 }"])
        .text();
    assert_eq!(
        built,
        super::yaml(&[
            "limits:",
            "  max_messages: 4",
            "upstreams:",
            "  up:",
            "    kind: sim",
            "    sim:",
            "      ttft: 0s",
            "  other:",
            "    kind: sim",
            "routes:",
            "  - model: demo",
            "    pools:",
            "      - upstream: up",
            "    limits: { max_in_flight: 2 }",
            "  - model: big",
            "    pools: [{ upstream: other }]",
        ])
    );
    super::parse_ok(&built);
}
