//! `supctl events [--follow]`: the event log, oldest first.
//!
//! supd answers at most a page of events (1,000 by default, at most 5,000
//! and about 1 MiB): without `--after` the newest ones, with `--after SEQ`
//! the oldest after SEQ, so that the last one's sequence number continues
//! a walk without a gap. Larger `--limit`s and `--all` are followed here,
//! page after page; a cut answer says so on stderr.

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
    after: Option<u64>,
    all: bool,
    json: bool,
) -> Result<String, CtlError> {
    let events = fetch(client, limit, after, all).await?;
    if json {
        events_json(&events).map_err(json_error)
    } else {
        Ok(events_text(&events))
    }
}

/// What `events` shows (oldest first), with a note on stderr when supd
/// kept more than it shows.
async fn fetch(
    client: &mut Client,
    limit: Option<u32>,
    after: Option<u64>,
    all: bool,
) -> Result<Vec<v1::Event>, CtlError> {
    let (events, note) = match (all, after) {
        (true, after) => (walk(client, after.unwrap_or(0), None).await?.0, None),
        (false, Some(after)) => {
            let wanted = limit.map_or(0, |l| l as usize);
            let (events, omitted) = walk(client, after, Some(wanted)).await?;
            let note = events
                .last()
                .filter(|_| omitted > 0)
                .map(|last| more_after_note(omitted, last.seq));
            (events, note)
        }
        (false, None) => tail(client, limit).await?,
    };
    if let Some(note) = note {
        eprintln!("supctl: {note}");
    }
    Ok(events)
}

/// The newest `limit` events (supd's default page without one), and a note
/// when older ones were left out. A limit above what supd answers at once
/// is met by reading the whole log forward.
async fn tail(
    client: &mut Client,
    limit: Option<u32>,
) -> Result<(Vec<v1::Event>, Option<String>), CtlError> {
    let page = client
        .events(v1::ListEventsRequest {
            after_seq: 0,
            limit: limit.unwrap_or(0),
            from_oldest: false,
        })
        .await?;
    let cut_by_supd = limit.is_some_and(|l| page.events.len() < l as usize);
    if page.omitted > 0 && cut_by_supd {
        let (all, _) = walk(client, 0, None).await?;
        let keep = limit.map_or(all.len(), |l| l as usize);
        let skip = all.len().saturating_sub(keep);
        let omitted = u32::try_from(skip).unwrap_or(u32::MAX);
        let events: Vec<v1::Event> = all.into_iter().skip(skip).collect();
        return Ok((events, (omitted > 0).then(|| older_note(omitted))));
    }
    let note = (page.omitted > 0).then(|| older_note(page.omitted));
    Ok((oldest_first(page.events), note))
}

/// Events after `after`, oldest first, page after page: `wanted` of them
/// (`Some(0)`: one page of supd's default size; `None`: every one). Also
/// how many matching ones were left after the last.
async fn walk(
    client: &mut Client,
    mut after: u64,
    wanted: Option<usize>,
) -> Result<(Vec<v1::Event>, u32), CtlError> {
    let mut out: Vec<v1::Event> = Vec::new();
    loop {
        let limit = match wanted {
            Some(n) => u32::try_from(n.saturating_sub(out.len())).unwrap_or(u32::MAX),
            // supd's largest answer (it cuts larger limits to this).
            None => 5000,
        };
        let page = client
            .events(v1::ListEventsRequest {
                after_seq: after,
                limit,
                from_oldest: true,
            })
            .await?;
        let events = oldest_first(page.events);
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok((out, page.omitted));
        };
        // A supd from before paging ignores from_oldest: never go back.
        if last <= after {
            return Ok((out, 0));
        }
        after = last;
        out.extend(events);
        let done = match wanted {
            Some(0) => true,
            Some(n) => out.len() >= n,
            None => false,
        };
        if done || page.omitted == 0 {
            return Ok((out, page.omitted));
        }
    }
}

pub fn older_note(omitted: u32) -> String {
    format!("{omitted} older events not shown; --limit N or --all for more")
}

pub fn more_after_note(omitted: u32, last: u64) -> String {
    format!("{omitted} more events after {last}; go on with --after {last} (or --all)")
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
    after: Option<u64>,
    all: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut last = after.unwrap_or(0);
    let mut first = true;
    let mut header = true;
    loop {
        // First what `events` shows (from --after on: all of it), then
        // every new one (all pages of it: a burst of more than a page must
        // not be skipped).
        let events = if first && after.is_none() {
            fetch(client, limit, None, all).await?
        } else {
            walk(client, last, None).await?.0
        };
        first = false;
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
/// kind, so every kept event is fetched (page by page) and the drills are
/// picked here.
pub(super) async fn drills(
    client: &mut Client,
    limit: Option<u32>,
    after: Option<u64>,
    json_out: bool,
) -> Result<String, CtlError> {
    let (events, _) = walk(client, after.unwrap_or(0), None).await?;
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
