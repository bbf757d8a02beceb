//! Reads that stay bounded, with the real supd, agents and supctl: the
//! status summary counts every node, `supctl nodes` and `/api/v1/nodes`
//! page by node id with state and job filters and a continue token, events
//! page forward from a sequence number, and bad input (an unknown state, a
//! garbled token, an unknown job) is refused naming it. The bounds
//! themselves are checked at 20,000 nodes by supd's unit tests
//! (`pages.rs`) and measured at 16,384 with sup-loadgen (BENCHMARKS.md).

use std::collections::BTreeSet;

use anyhow::{anyhow, Result};
use serde_json::Value;
use sup_e2e::*;

const CONFIG: &str = r#"
[nodes]
unreachable_after = "30s"
telemetry_interval = "500ms"
"#;

const NODES: usize = 7;

fn ids(list: &Value) -> Vec<String> {
    list["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn http_json(port: u16, path: &str) -> Result<(u16, Value)> {
    let (code, body) = http_get(port, path)?;
    let v = serde_json::from_str(&body).map_err(|e| anyhow!("{path}: {e}: {body}"))?;
    Ok((code, v))
}

#[test]
fn nodes_and_events_page_with_filters_and_tokens() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), CONFIG)?;
    supd.start()?;
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), NODES, |_| url.clone(), &[])?;
    wait_ready_nodes(&url, NODES)?;
    for id in ["node-2", "node-5"] {
        let out = supctl(&url, &["cordon", id, "--reason", "paging test"])?;
        assert!(out.status.success(), "{out:?}");
    }

    // The status counts every node and, this small, lists every one.
    let status = supctl_json(&url, &["status"])?;
    assert_eq!(status["node_counts"]["total"], NODES, "{status}");
    assert_eq!(status["node_counts"]["cordoned"], 2, "{status}");
    assert_eq!(status["nodes_omitted"], 0, "{status}");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(NODES));
    let (code, http_status) = http_json(supd.http_port, "/api/v1/status")?;
    assert_eq!(code, 200);
    assert_eq!(http_status["node_counts"], status["node_counts"]);

    let cordoned = supctl_json(&url, &["nodes", "--state", "cordoned"])?;
    assert_eq!(ids(&cordoned), ["node-2", "node-5"]);
    assert_eq!(cordoned["continue"], Value::Null);

    // A walk by pages of 3: every node once, in id order.
    let mut walked = Vec::new();
    let mut args = vec!["nodes".to_owned(), "--limit".into(), "3".into()];
    for page in 0.. {
        assert!(page < NODES, "the walk does not end");
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let list = supctl_json(&url, &refs)?;
        walked.extend(ids(&list));
        match list["continue"].as_str() {
            Some(token) => {
                assert_eq!(list["remaining"], NODES - walked.len(), "{list}");
                args = vec![
                    "nodes".into(),
                    "--limit".into(),
                    "3".into(),
                    "--continue".into(),
                    token.to_owned(),
                ];
            }
            None => break,
        }
    }
    let expected: Vec<String> = (1..=NODES).map(|i| format!("node-{i}")).collect();
    assert_eq!(walked, expected);
    assert_eq!(ids(&supctl_json(&url, &["nodes", "--all"])?), expected);

    // The table says how to go on.
    let out = supctl(&url, &["nodes", "--state", "ready", "--limit", "2"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3 nodes more; next page: supctl nodes --state ready --limit 2 --continue "),
        "{text}"
    );

    // The same through HTTP, sized as JSON.
    let (code, first) = http_json(supd.http_port, "/api/v1/nodes?limit=4&state=ready,cordoned")?;
    assert_eq!(code, 200, "{first}");
    assert_eq!(ids(&first).len(), 4);
    let token = first["continue"]
        .as_str()
        .ok_or_else(|| anyhow!("no token: {first}"))?;
    let (_, rest) = http_json(
        supd.http_port,
        &format!("/api/v1/nodes?limit=4&state=ready,cordoned&continue={token}"),
    )?;
    let all: BTreeSet<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    assert_eq!(all.len(), NODES, "{first} {rest}");
    assert_eq!(rest["continue"], Value::Null);

    // Bad input, named.
    let (code, body) = http_get(supd.http_port, "/api/v1/nodes?state=cordon")?;
    assert_eq!(code, 400);
    assert!(body.contains("unknown node state 'cordon'"), "{body}");
    let (code, body) = http_get(supd.http_port, "/api/v1/nodes?continue=garbage")?;
    assert_eq!(code, 400);
    assert!(body.contains("invalid continue token 'garbage'"), "{body}");
    let (code, body) = http_get(
        supd.http_port,
        &format!("/api/v1/nodes?state=cordoned&continue={token}"),
    )?;
    assert_eq!(code, 400, "a token of another query: {body}");
    assert!(body.contains("issued for other filters"), "{body}");
    let (code, body) = http_get(supd.http_port, "/api/v1/nodes?job=nope")?;
    assert_eq!(code, 404);
    assert!(body.contains("unknown job 'nope'"), "{body}");
    let out = supctl(&url, &["nodes", "--continue", "garbage"])?;
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid continue token 'garbage'"), "{err}");
    let out = supctl(&url, &["nodes", "--state", "cordon"])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Events: a tail by default, forward pages from --after.
    let all_events = supctl_json(&url, &["events", "--all"])?;
    let seqs: Vec<u64> = all_events
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert!(seqs.len() > 4, "{all_events}");
    let first_two = supctl_json(&url, &["events", "--after", "0", "--limit", "2"])?;
    let got: Vec<u64> = first_two
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(got, seqs[..2]);
    let newest = supctl_json(&url, &["events", "--limit", "2"])?;
    let got: Vec<u64> = newest
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["seq"].as_u64()).collect())
        .unwrap_or_default();
    // Events may have been added since: the newest two, whatever they are.
    assert_eq!(got.len(), 2, "{newest}");
    assert!(
        got[0] + 1 == got[1] && got[0] >= seqs[seqs.len() - 2],
        "{newest}"
    );
    let out = supctl(&url, &["events", "--after", "0", "--limit", "2"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("go on with --after {}", seqs[1])),
        "{err}"
    );
    let (code, head_and_body) = http_get(supd.http_port, "/api/v1/events?limit=1")?;
    assert_eq!(code, 200);
    let events: Value = serde_json::from_str(&head_and_body)?;
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    Ok(())
}
