//! partnerstack-sync keeps a faithful, queryable copy of a PartnerStack partner program
//! in Postgres.
//!
//! Webhooks arrive at [`routes::webhook`], are committed raw to `webhook_events` by the
//! [`ingest`] writer, and are applied by the applier through [`apply`], the one door into
//! the entity tables (whose columns are declared once, in [`columns`]). The [`reconcile`]r
//! polls PartnerStack through the `partnerstack` crate's client and applies what it reads
//! through the same door. Other services read the copy through [`api`], the `/v1` query
//! API. Every change [`apply`] makes is logged in the same transaction and served as a
//! feed and per-object history ([`api::changes`]), and pushed to configured endpoints by
//! the [`relay`]; [`retention`] prunes what is past its time. [`app::run`] wires it all
//! together. See `ARCHITECTURE.md` for the map.

pub mod api;
pub mod app;
pub mod apply;
pub mod auth;
pub mod burst;
pub mod columns;
pub mod config;
pub mod cursor;
pub mod db;
#[cfg(feature = "sim")]
pub mod demo;
pub mod error;
pub mod feed;
pub mod ingest;
pub mod long_poll;
pub mod memory;
pub mod reconcile;
pub mod relay;
pub mod retention;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
mod text_enum;
pub mod writes;

/// The module graph has no cycles: no top-level module uses one that uses it back
/// (state low, routes above it; see ARCHITECTURE.md).
#[cfg(test)]
mod layers {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules each top-level module's code (comments and tests aside)
    /// refers to as `crate::<module>`.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph = BTreeMap::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name == "lib" || name == "main" {
                continue;
            }
            let mut files = vec![path.clone()];
            if path.is_dir() {
                files = walk(&path);
            }
            let mut deps = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
                for line in code.lines() {
                    let line = line.split("//").next().unwrap_or("");
                    for part in line.split("crate::").skip(1) {
                        let dep: String = part
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !dep.is_empty() && dep != name {
                            deps.insert(dep);
                        }
                    }
                }
            }
            graph.insert(name, deps);
        }
        graph
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    /// A path from `from` back to `to`, if there is one.
    fn path(
        graph: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        for dep in graph.get(from).into_iter().flatten() {
            if dep == to {
                return Some(vec![from.to_string(), to.to_string()]);
            }
            if seen.insert(dep.clone())
                && let Some(mut rest) = path(graph, dep, to, seen)
            {
                rest.insert(0, from.to_string());
                return Some(rest);
            }
        }
        None
    }

    /// The `/v1` handler modules: the modules of `src/api/` that describe a route
    /// (`#[utoipa::path]`).
    fn handler_modules() -> BTreeSet<String> {
        let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        walk(&api)
            .into_iter()
            .filter(|file| {
                std::fs::read_to_string(file)
                    .unwrap()
                    .contains("#[utoipa::path(")
            })
            .map(|file| file.file_stem().unwrap().to_string_lossy().to_string())
            .filter(|name| name != "mod")
            .collect()
    }

    /// The modules named after `api::` in `code` (comments aside): `api::sync::load`
    /// names `sync`, `api::{self, params}` names `self` and `params`, `api::*` names `*`.
    fn api_paths(code: &str) -> BTreeSet<String> {
        let mut named = BTreeSet::new();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            let mut rest = line;
            while let Some(at) = rest.find("api::") {
                let before = rest[..at].chars().next_back();
                let after = &rest[at + "api::".len()..];
                rest = after;
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `openapi::`, `my_api::`: another path
                }
                let group = match after.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or(""),
                    None => after,
                };
                for item in group.split(',') {
                    let item = item.trim();
                    let name: String = item
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    named.insert(if item.starts_with('*') {
                        "*".into()
                    } else {
                        name
                    });
                }
            }
        }
        named
    }

    #[test]
    fn the_scan_for_api_paths_reads_every_way_of_naming_one() {
        let named = api_paths(
            "use crate::api::{self, params};\nlet s = api::sync::load();\n\
             use crate::api::*;\nuse utoipa::openapi::path; // api::relay",
        );
        let expected = ["self", "params", "sync", "*"].map(String::from);
        assert_eq!(named, BTreeSet::from(expected));
        let handlers = handler_modules();
        for module in ["sync", "relay", "changes"] {
            assert!(handlers.contains(module), "{handlers:?}");
        }
        assert!(!handlers.contains("params") && !handlers.contains("cursor"));
    }

    /// The status page, `/metrics` and the relay read their models from the domain
    /// modules, as the `/v1` handlers do: none of them reaches into a handler module (the
    /// router may still mount `api::routes()` and use the API's shared items).
    #[test]
    fn routes_telemetry_and_relay_use_no_v1_handler_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let handlers = handler_modules();
        let mut offences = Vec::new();
        for place in ["routes", "telemetry", "relay"] {
            let dir = src.join(place);
            let files = if dir.is_dir() {
                walk(&dir)
            } else {
                vec![src.join(format!("{place}.rs"))]
            };
            assert!(!files.is_empty(), "no source for {place}");
            for file in files {
                let code = std::fs::read_to_string(&file).unwrap();
                for name in api_paths(&code) {
                    if name == "*" || handlers.contains(&name) {
                        offences.push(format!("{} uses api::{name}", file.display()));
                    }
                }
            }
        }
        assert!(offences.is_empty(), "{}", offences.join("\n"));
    }

    #[test]
    fn no_top_level_module_uses_one_that_uses_it_back() {
        let graph = graph();
        assert!(graph.contains_key("state") && graph.contains_key("routes"));
        let cycles: Vec<String> = graph
            .keys()
            .filter_map(|m| path(&graph, m, m, &mut BTreeSet::new()))
            .map(|p| p.join(" -> "))
            .collect();
        assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    }
}
