//! `supctl events [--follow]`: the event log, oldest first.

use sup_proto::json::EventView;
use sup_proto::v1;

use super::json_error;
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::{or_none, timestamp};
use crate::table::*;
use std::io::Write;

pub(super) async fn run(
    client: &mut Client,
    limit: Option<u32>,
    after: u64,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::ListEventsRequest {
        after_seq: after,
        limit: limit.unwrap_or(0),
    };
    let events = oldest_first(client.events(req).await?);
    if json {
        events_json(&events).map_err(json_error)
    } else {
        Ok(events_text(&events))
    }
}

/// `events` must be in display order already (see [`oldest_first`]).
pub fn events_json(events: &[v1::Event]) -> serde_json::Result<String> {
    json(&events.iter().map(EventView::from).collect::<Vec<_>>())
}

/// The contract promises events oldest first whatever order the server used.
pub fn oldest_first(mut events: Vec<v1::Event>) -> Vec<v1::Event> {
    events.sort_by_key(|e| e.seq);
    events
}

/// `events` must be in display order already (see [`oldest_first`]).
pub fn events_text(events: &[v1::Event]) -> String {
    if events.is_empty() {
        return "No events.\n".to_owned();
    }
    let mut table = new_table(&["SEQ", "AT", "KIND", "NODE", "JOB", "REASON"]);
    for e in events {
        table.add_row(vec![
            e.seq.to_string(),
            timestamp(e.at_unix_ms),
            or_none(&e.kind),
            or_none(&e.node),
            or_none(&e.job),
            or_none(&e.reason),
        ]);
    }
    finish(table)
}

/// `events --follow`: what `events` prints, then each new event as it is
/// recorded (polled every second), until interrupted.
pub(super) async fn follow(
    client: &mut Client,
    limit: Option<u32>,
    after: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut last = after;
    let mut limit = limit.unwrap_or(0);
    let mut header = true;
    loop {
        let req = v1::ListEventsRequest {
            after_seq: last,
            limit,
        };
        let events = oldest_first(client.events(req).await?);
        if let Some(e) = events.last() {
            last = last.max(e.seq);
        }
        if json {
            for e in &events {
                let text = events_json(std::slice::from_ref(e)).map_err(json_error)?;
                let one = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                writeln!(out, "{one}")?;
            }
        } else if !events.is_empty() {
            let text = events_text(&events);
            // The header once; later batches are rows only.
            let rows = if header {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |(_, rows)| rows)
            };
            out.write_all(rows.as_bytes())?;
            header = false;
        }
        out.flush()?;
        limit = 0;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn events_json_is_an_array_oldest_first_with_nulls() {
        let events = oldest_first(vec![
            v1::Event {
                seq: 8,
                at_unix_ms: 2_000,
                kind: "node_cordoned".into(),
                node: "n1".into(),
                reason: "xid 79".into(),
                ..Default::default()
            },
            v1::Event {
                seq: 7,
                at_unix_ms: 1_000,
                kind: "supervisor_started".into(),
                ..Default::default()
            },
        ]);
        let v: serde_json::Value = serde_json::from_str(&events_json(&events).unwrap()).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["seq"], 7);
        assert_eq!(arr[0]["at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(arr[0]["node"], serde_json::Value::Null);
        assert_eq!(arr[0]["job"], serde_json::Value::Null);
        assert_eq!(arr[0]["reason"], serde_json::Value::Null);
        assert_eq!(arr[1]["node"], "n1");
        assert_eq!(events_json(&[]).unwrap(), "[]\n");
    }

    #[test]
    fn events_table_uses_dash_for_not_applicable() {
        let e = v1::Event {
            seq: 1,
            at_unix_ms: 1_000,
            kind: "supervisor_started".into(),
            ..Default::default()
        };
        let text = events_text(&[e]);
        assert_eq!(
            row(&text, "1"),
            [
                "1",
                "1970-01-01T00:00:01Z",
                "supervisor_started",
                "-",
                "-",
                "-"
            ]
        );
        assert_eq!(events_text(&[]), "No events.\n");
    }
}

/// One drill with the events that followed it about its node or its job.
#[derive(Debug, serde::Serialize)]
pub struct DrillReport {
    pub drill: EventView,
    pub followed_by: Vec<EventView>,
}

/// `events --drills`: a game day's report. The events API has no filter by
/// kind, so every kept event is fetched and the drills are picked here.
pub(super) async fn drills(
    client: &mut Client,
    limit: Option<u32>,
    after: u64,
    json_out: bool,
) -> Result<String, CtlError> {
    let req = v1::ListEventsRequest {
        after_seq: after,
        limit: 0,
    };
    let events = oldest_first(client.events(req).await?);
    let reports = drill_reports(&events, limit.map_or(usize::MAX, |l| l as usize));
    if json_out {
        json(
            &reports
                .iter()
                .map(|(d, f)| DrillReport {
                    drill: EventView::from(*d),
                    followed_by: f.iter().map(|e| EventView::from(*e)).collect(),
                })
                .collect::<Vec<_>>(),
        )
        .map_err(json_error)
    } else {
        Ok(drills_text(&reports))
    }
}

/// The newest `limit` drills in `events` (oldest first), each with the
/// events after it about the same node or the drill's job, up to the next
/// drill on that node or job.
pub fn drill_reports(events: &[v1::Event], limit: usize) -> Vec<(&v1::Event, Vec<&v1::Event>)> {
    let about = |e: &v1::Event, d: &v1::Event| {
        (!d.node.is_empty() && e.node == d.node) || (!d.job.is_empty() && e.job == d.job)
    };
    let drills: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == "drill")
        .map(|(i, _)| i)
        .collect();
    let skip = drills.len().saturating_sub(limit);
    drills[skip..]
        .iter()
        .map(|&i| {
            let d = &events[i];
            let followed = events[i + 1..]
                .iter()
                .take_while(|e| !(e.kind == "drill" && about(e, d)))
                .filter(|e| about(e, d))
                .collect();
            (d, followed)
        })
        .collect()
}

pub fn drills_text(reports: &[(&v1::Event, Vec<&v1::Event>)]) -> String {
    if reports.is_empty() {
        return "No drills.\n".to_owned();
    }
    let mut table = new_table(&["SEQ", "AT", "KIND", "NODE", "JOB", "REASON"]);
    for (d, followed) in reports {
        for (e, kind) in std::iter::once((*d, d.kind.clone()))
            .chain(followed.iter().map(|e| (*e, format!("  └ {}", e.kind))))
        {
            table.add_row(vec![
                e.seq.to_string(),
                timestamp(e.at_unix_ms),
                kind,
                or_none(&e.node),
                or_none(&e.job),
                or_none(&e.reason),
            ]);
        }
    }
    finish(table)
}
