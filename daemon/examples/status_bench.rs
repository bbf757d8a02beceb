//! What one `/metrics` scrape, `/api/v1/status` or `supctl status` costs
//! supd at cluster scale, and what a job report's membership check costs,
//! on the real engine (no network, no store).
//!
//!     cargo run --release -p supd --example status_bench [-- --nodes 2048 --rounds 10]
//!
//! Builds an engine with N nodes × 8 GPUs (readings on every GPU) and one job
//! on all but 20 of them, then times, each over several rounds (min / median):
//! - `view::status` (runs inside the actor: the engine is busy meanwhile);
//! - `metrics::render` on that status and the 0.0.4 text conversion (run on
//!   the HTTP task, outside the actor);
//! - one progress report from every node of the job (each checks that the
//!   node belongs to the job's current generation).
//!
//! Peak RSS growth of the first round of each (VmHWM after a reset, minus
//! VmRSS before; Linux) is what that work adds to supd's peak RSS.

use std::time::{Duration, Instant};

use sup_core::{Engine, EngineConfig, GpuInventory, GpuReading, Registration};
use supd::metrics::Counters;

/// A field of /proc/self/status in bytes (Linux), 0 elsewhere.
fn proc_status_bytes(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); ignored elsewhere.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `f` `rounds` times; prints min and median time and the peak RSS
/// growth of the first round.
fn time<T>(label: &str, rounds: usize, mut f: impl FnMut() -> T) -> T {
    reset_peak_rss();
    let base = proc_status_bytes("VmRSS:");
    let mut times = Vec::with_capacity(rounds);
    let mut out = None;
    let mut extra = 0;
    for i in 0..rounds {
        let start = Instant::now();
        let v = f();
        times.push(start.elapsed());
        if i == 0 {
            extra = proc_status_bytes("VmHWM:").saturating_sub(base);
        }
        out = Some(v);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<44} min {:>8.2} ms   median {:>8.2} ms   peak RSS +{:>6.1} MiB",
        ms(times[0]),
        ms(times[times.len() / 2]),
        mib(extra)
    );
    out.expect("at least one round")
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes = arg(&args, "--nodes", 2048);
    let rounds = arg(&args, "--rounds", 10).max(1);
    let spares = 20.min(nodes.saturating_sub(1));
    let gpus = 8u32;

    let mut e = Engine::new(EngineConfig {
        unreachable_after_ms: 30_000,
        event_log_capacity: 10_000,
        spares_target: u32::try_from(spares).unwrap_or(u32::MAX),
        ..Default::default()
    });
    let now = 1_000;
    for i in 0..nodes {
        let id = format!("node-{i:04}");
        let session = i as u64 + 1;
        e.on_register(
            now,
            Registration {
                validates: false,
                session,
                node_id: id.clone(),
                address: format!("10.0.{}.{}:7070", i / 256, i % 256),
                hostname: format!("gpu-host-{i:04}.cluster.example"),
                agent_version: "0.1.0".to_owned(),
                instance_id: format!("i-{i:08x}"),
                gpu_backend: "nvml".to_owned(),
                gpus: (0..gpus)
                    .map(|g| GpuInventory {
                        index: g,
                        uuid: format!("GPU-{i:08x}-{g:04x}-0000-0000-000000000000"),
                        name: "NVIDIA H100 80GB HBM3".to_owned(),
                        pci_bus_id: format!("00000000:{:02X}:00.0", 0x10 + g),
                        memory_total_bytes: Some(85_899_345_920),
                    })
                    .collect(),
            },
        )
        .expect("register");
        let readings = (0..gpus)
            .map(|g| GpuReading {
                index: g,
                temperature_c: Some(40.0 + f64::from(g)),
                power_w: Some(350.5),
                utilization_gpu_pct: Some(97),
                utilization_memory_pct: Some(40),
                sm_clock_mhz: Some(1980),
                memory_clock_mhz: Some(2619),
                memory_used_bytes: Some(60_000_000_000),
            })
            .collect();
        assert!(e.on_telemetry(now, &id, session, readings).is_applied());
    }
    let job_nodes = nodes - spares;
    let spec = format!(
        "name = \"llm\"\ncommand = [\"python3\", \"train.py\"]\nnodes = {job_nodes}\n\
         gpus_per_node = {gpus}\ncheckpoint_dir = \"/ckpt/llm\"\ncheckpoint_layout = \"marker:COMPLETE\"\n"
    );
    let parsed = supd::jobspec::parse(&spec).expect("spec");
    e.submit_job(now, parsed, &spec, "bench").expect("submit");
    while e.poll_action().is_some() {}
    let (generation, members) = {
        let j = e.job("llm").expect("job");
        (j.record.generation, j.record.nodes.clone())
    };
    let session_of = |id: &str| -> u64 {
        id.trim_start_matches("node-")
            .parse::<u64>()
            .expect("node id")
            + 1
    };
    println!(
        "engine: {nodes} nodes × {gpus} GPUs, job 'llm' on {} node(s) (generation {generation}); {rounds} round(s) each",
        members.len()
    );

    let status = time("Cluster::build", rounds, || {
        supd::cluster::Cluster::build(&e, None)
    });
    let counters = Counters::default();
    let om = time("metrics::render (OpenMetrics)", rounds, || {
        supd::metrics::render(&status, &counters).expect("render")
    });
    let text = time("metrics::to_text_format (0.0.4)", rounds, || {
        supd::metrics::to_text_format(&om)
    });
    println!(
        "  exposition: {:.1} MiB OpenMetrics, {:.1} MiB text, {} lines",
        mib(om.len()),
        mib(text.len()),
        text.lines().count()
    );
    // `--dump PATH`: the text exposition with its lines sorted (series order
    // within a family is not part of the format), to compare two builds.
    if let Some(path) = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1))
    {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        std::fs::write(path, lines.join("\n")).expect("write the dump");
    }
    drop((om, text));
    time("scrape total (status + render + text)", rounds, || {
        let s = supd::cluster::Cluster::build(&e, None);
        let om = supd::metrics::render(&s, &counters).expect("render");
        supd::metrics::to_text_format(&om).len()
    });

    let mut step = 0u64;
    time(
        &format!("{} progress reports (1 per node)", members.len()),
        rounds,
        || {
            step += 1;
            let mut accepted = 0;
            for n in &members {
                if e.on_progress(
                    now + 1,
                    n,
                    session_of(n),
                    sup_core::JobProgress {
                        job: "llm".to_owned(),
                        generation,
                        step,
                        ..Default::default()
                    },
                )
                .is_applied()
                {
                    accepted += 1;
                }
            }
            while e.poll_action().is_some() {}
            assert_eq!(accepted, members.len());
        },
    );
}
