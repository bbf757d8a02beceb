//! What several commands' tables share: the table style, widths, and the
//! summaries more than one view shows (GPUs by health, key/value fields).

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use sup_proto::json::gpu_health_name;
use sup_proto::v1;

use crate::humanize::NONE;

/// Longest cordon reason shown in the `nodes` table; `node ID` shows it whole.
pub(crate) const REASON_WIDTH: usize = 32;

/// Gap between table columns.
pub(crate) const COLUMN_GAP: u16 = 3;

pub(crate) fn json<T: Serialize>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(value).map(|mut s| {
        s.push('\n');
        s
    })
}

pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `8/8 ok`: GPUs whose health is ok, out of all the node reported.
pub(crate) fn gpu_summary(gpus: &[v1::Gpu]) -> String {
    if gpus.is_empty() {
        return NONE.to_owned();
    }
    let ok = gpus
        .iter()
        .filter(|g| gpu_health_name(g.health) == "ok")
        .count();
    format!("{ok}/{} ok", gpus.len())
}

/// `Key: value` lines with the values lined up. An empty key continues the
/// value of the key above it.
pub(crate) fn fields_text(fields: &[(&str, String)]) -> String {
    let key_width = fields
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (key, value) in fields {
        let key = if key.is_empty() {
            String::new()
        } else {
            format!("{key}:")
        };
        out.push_str(&format!("{key:<key_width$} {value}\n"));
    }
    out
}

/// Borderless, left-aligned columns in the style of kubectl and sinfo: easy
/// to read, and easy to grep or cut. No wrapping and no terminal probing, so
/// a pipe gets exactly what a terminal gets.
pub(crate) fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    table
}

pub(crate) fn finish(mut table: Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, COLUMN_GAP));
    }
    let mut s = table.trim_fmt();
    s.push('\n');
    s
}
