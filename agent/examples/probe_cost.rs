//! What GPU health polling costs: a benchmark that prints numbers, not a
//! test that asserts them.
//!
//! Probe mode (default) opens the NVML probe in this process, prints the
//! inventory, runs N poll cycles (telemetry + health signals, exactly what
//! the agent's probe thread does per interval), and prints the CPU time per
//! cycle, the CPU share that means at a 1 s interval, the verdicts, and this
//! process's peak RSS:
//!
//! ```sh
//! cargo build --release -p fake-nvml -p sup-agent --examples
//! FAKE_NVML_STATE= target/release/examples/probe_cost --lib target/release/libfake_nvml.so
//! target/release/examples/probe_cost            # the system's libnvidia-ml, on a GPU host
//! ```
//!
//! `--breakdown` adds the wall time of each NVML query the probe makes, on
//! GPU 0, to show where a poll cycle's time goes.
//!
//! Agent mode (`--agent PATH`) runs the real `sup-agent` binary for a while
//! at a 1 s interval (no supd needed: it keeps retrying in the background)
//! and prints its CPU share and peak RSS as a whole process:
//!
//! ```sh
//! target/release/examples/probe_cost --agent target/release/sup-agent \
//!     --lib target/release/libfake_nvml.so --seconds 30
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sup_agent::health::{HealthState, Rules};
use sup_agent::probe::{GpuProbe, NvmlProbe};
use sup_proto::v1::GpuHealth;

struct Args {
    lib: Option<PathBuf>,
    cycles: usize,
    interval: Duration,
    agent: Option<PathBuf>,
    seconds: u64,
    breakdown: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        lib: None,
        cycles: 1000,
        interval: Duration::ZERO,
        agent: None,
        seconds: 30,
        breakdown: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--lib" => args.lib = Some(PathBuf::from(value()?)),
            "--cycles" => args.cycles = value()?.parse().map_err(|e| format!("--cycles: {e}"))?,
            "--interval" => {
                args.interval =
                    humantime::parse_duration(&value()?).map_err(|e| format!("--interval: {e}"))?
            }
            "--agent" => args.agent = Some(PathBuf::from(value()?)),
            "--breakdown" => args.breakdown = true,
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "-h" | "--help" => {
                return Err(
                    "usage: probe_cost [--lib LIBNVML] [--cycles N] [--interval DUR] \
                            [--breakdown] [--agent SUP_AGENT --seconds S]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.cycles == 0 {
        return Err("--cycles must be at least 1".to_owned());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("probe_cost: {err}");
            std::process::exit(2);
        }
    };
    let result = match &args.agent {
        Some(agent) => agent_mode(&args, agent),
        None => probe_mode(&args),
    };
    if let Err(err) = result {
        eprintln!("probe_cost: {err}");
        std::process::exit(1);
    }
}

fn probe_mode(args: &Args) -> Result<(), String> {
    let library = args.lib.as_ref().map_or_else(
        || "the system libnvidia-ml".to_owned(),
        |p| p.display().to_string(),
    );
    println!("NVML library: {library}");
    let opened = Instant::now();
    let mut probe = NvmlProbe::open(args.lib.as_deref()).map_err(|e| e.to_string())?;
    let inventory = probe.inventory().map_err(|e| e.to_string())?;
    println!(
        "NVML opened and inventory taken in {:.1} ms",
        opened.elapsed().as_secs_f64() * 1e3
    );
    println!("inventory ({} GPUs):", inventory.len());
    for g in &inventory {
        println!(
            "  {} {} {:?} {} memory {}",
            g.index,
            g.uuid,
            g.name,
            g.pci_bus_id,
            g.memory_total_bytes.map_or_else(
                || "unknown".to_owned(),
                |m| format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64)
            ),
        );
    }

    // Warm-up: the first calls initialize per-GPU state inside NVML (and
    // the probe learns which NVLink links exist).
    probe.sample().map_err(|e| e.to_string())?;
    let mut health = probe.health().map_err(|e| e.to_string())?;

    // CPU time is read once around the whole run: the kernel updates a
    // running thread's CPU clock only at scheduler ticks, so per-cycle reads
    // would be ticks, not times. Over many cycles the error is one tick.
    let mut wall = Vec::with_capacity(args.cycles);
    let cpu_before = thread_cpu_ns()?;
    for _ in 0..args.cycles {
        let w0 = Instant::now();
        probe.sample().map_err(|e| e.to_string())?;
        health = probe.health().map_err(|e| e.to_string())?;
        wall.push(w0.elapsed().as_nanos() as f64);
        if !args.interval.is_zero() {
            std::thread::sleep(args.interval);
        }
    }
    let cpu_total_ns = thread_cpu_ns()?.saturating_sub(cpu_before) as f64;
    println!(
        "{} poll cycles, each = telemetry + health signals for {} GPUs{}",
        args.cycles,
        inventory.len(),
        if args.interval.is_zero() {
            ", back to back".to_owned()
        } else {
            format!(", every {}", humantime::format_duration(args.interval))
        }
    );
    let mean_cpu_s = cpu_total_ns / args.cycles as f64 / 1e9;
    println!(
        "CPU per poll cycle:  mean {:.3} ms ({:.1} ms CPU over the run)",
        mean_cpu_s * 1e3,
        cpu_total_ns / 1e6
    );
    println!("wall per poll cycle: {}", summary_ms(&mut wall));
    println!(
        "CPU share at a 1 s interval: {:.4} % of one core (goal: < 0.5 %)",
        mean_cpu_s * 100.0
    );

    let mut state = HealthState::new(Rules::defaults(), inventory);
    let now = sup_proto::time::to_unix_ms(SystemTime::now());
    state.observe_sample(health.clone(), now);
    println!("health signals of GPU 0: {:?}", health.gpus.first());
    println!("verdicts (visible GPUs: {:?}):", health.visible_gpus);
    for v in state.verdicts(now) {
        let h = GpuHealth::try_from(v.health).unwrap_or(GpuHealth::Unspecified);
        println!(
            "  GPU {} {:?} {}{}",
            v.index,
            h,
            v.reason,
            if v.evidence.is_empty() {
                String::new()
            } else {
                format!(" {:?}", v.evidence)
            }
        );
    }
    if args.breakdown {
        breakdown(args.lib.as_deref())?;
    }
    println!(
        "peak RSS (VmHWM) of this process: {}",
        vm_hwm("/proc/self/status").unwrap_or_else(|e| e)
    );
    Ok(())
}

/// Wall time per call of each NVML query the probe makes, on GPU 0.
fn breakdown(lib: Option<&std::path::Path>) -> Result<(), String> {
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    use nvml_wrapper::structs::device::FieldId;
    use nvml_wrapper::sys_exports::field_id as f;
    use nvml_wrapper::Nvml;

    let nvml = match lib {
        Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
        None => Nvml::init(),
    }
    .map_err(|e| e.to_string())?;
    let device = nvml.device_by_index(0).map_err(|e| e.to_string())?;
    let all_fields = [
        f::NVML_FI_DEV_ECC_SBE_VOL_TOTAL,
        f::NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
        f::NVML_FI_DEV_REMAPPED_COR,
        f::NVML_FI_DEV_REMAPPED_UNC,
        f::NVML_FI_DEV_REMAPPED_PENDING,
        f::NVML_FI_DEV_REMAPPED_FAILURE,
        f::NVML_FI_DEV_RETIRED_SBE,
        f::NVML_FI_DEV_RETIRED_DBE,
        f::NVML_FI_DEV_RETIRED_PENDING,
        f::NVML_FI_DEV_NVLINK_LINK_COUNT,
        f::NVML_FI_DEV_GET_GPU_RECOVERY_ACTION,
    ]
    .map(FieldId);
    const N: u32 = 50;
    let time = |name: &str, f: &dyn Fn() -> String| {
        let t0 = Instant::now();
        let mut outcome = String::new();
        for _ in 0..N {
            outcome = f();
        }
        println!(
            "  {name:<28} {:>8.1} us  {outcome}",
            t0.elapsed().as_secs_f64() * 1e6 / f64::from(N)
        );
    };
    let ok = |r: Result<String, nvml_wrapper::error::NvmlError>| {
        r.unwrap_or_else(|e| format!("error: {e}"))
    };
    println!("NVML query cost on GPU 0 (wall time per call, mean of {N}):");
    time("device_count", &|| {
        ok(nvml.device_count().map(|v| v.to_string()))
    });
    time("device_by_index", &|| {
        ok(nvml.device_by_index(0).map(|_| "ok".into()))
    });
    time("temperature", &|| {
        ok(device
            .temperature(TemperatureSensor::Gpu)
            .map(|v| v.to_string()))
    });
    time("power_usage", &|| {
        ok(device.power_usage().map(|v| v.to_string()))
    });
    time("utilization_rates", &|| {
        ok(device.utilization_rates().map(|u| u.gpu.to_string()))
    });
    time("clock_info(SM)", &|| {
        ok(device.clock_info(Clock::SM).map(|v| v.to_string()))
    });
    time("clock_info(Memory)", &|| {
        ok(device.clock_info(Clock::Memory).map(|v| v.to_string()))
    });
    time("memory_info", &|| {
        ok(device.memory_info().map(|m| m.used.to_string()))
    });
    time("field_values (11 fields)", &|| {
        ok(device.field_values_for(&all_fields).map(|v| {
            v.iter()
                .filter(|s| s.as_ref().is_ok_and(|s| s.value.is_ok()))
                .count()
                .to_string()
                + " answered"
        }))
    });
    for id in &all_fields {
        time(&format!("field {}", id.0), &|| {
            ok(device.field_values_for(std::slice::from_ref(id)).map(|v| {
                match v.into_iter().next() {
                    Some(Ok(s)) => format!("{:?}", s.value),
                    Some(Err(e)) => format!("error: {e}"),
                    None => "none".into(),
                }
            }))
        });
    }
    time("current_pcie_link_gen", &|| {
        ok(device.current_pcie_link_gen().map(|v| v.to_string()))
    });
    time("max_pcie_link_gen", &|| {
        ok(device.max_pcie_link_gen().map(|v| v.to_string()))
    });
    time("current_pcie_link_width", &|| {
        ok(device.current_pcie_link_width().map(|v| v.to_string()))
    });
    time("max_pcie_link_width", &|| {
        ok(device.max_pcie_link_width().map(|v| v.to_string()))
    });
    time("current_throttle_reasons", &|| {
        ok(device
            .current_throttle_reasons()
            .map(|v| format!("{:#x}", v.bits())))
    });
    time("nvlink state (link 0)", &|| {
        ok(device
            .link_wrapper_for(0)
            .is_active()
            .map(|v| v.to_string()))
    });
    Ok(())
}

fn agent_mode(args: &Args, agent: &PathBuf) -> Result<(), String> {
    let mut command = Command::new(agent);
    command
        .args([
            "--supervisor",
            "http://127.0.0.1:9",
            "--node-id",
            "probe-cost",
        ])
        .args(["--address", "127.0.0.1", "--telemetry-interval", "1s"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match &args.lib {
        Some(lib) => command
            .args(["--gpu-backend", "nvml"])
            .arg("--nvml-lib")
            .arg(lib),
        None => command.args(["--gpu-backend", "nvml"]),
    };
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", agent.display()))?;
    let pid = child.id();
    let result = (|| {
        // Startup (loading NVML, first samples) is not steady state.
        std::thread::sleep(Duration::from_secs(3));
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the agent exited early with {status}"));
        }
        let (c0, w0) = (process_cpu_ns(pid)?, Instant::now());
        std::thread::sleep(Duration::from_secs(args.seconds));
        let (c1, w1) = (process_cpu_ns(pid)?, w0.elapsed());
        let share = (c1 - c0) as f64 / w1.as_nanos() as f64;
        println!(
            "sup-agent (pid {pid}), nvml backend at a 1 s interval, no supd reachable, over {:.1} s:",
            w1.as_secs_f64()
        );
        println!(
            "  CPU: {:.3} ms per second = {:.4} % of one core (all threads; goal: < 0.5 %)",
            (c1 - c0) as f64 / 1e6 / w1.as_secs_f64(),
            share * 100.0
        );
        println!(
            "  peak RSS (VmHWM): {} (goal: < 20 MiB)",
            vm_hwm(&format!("/proc/{pid}/status"))?
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// CPU time of the calling thread, in nanoseconds (first field of
/// schedstat: time spent on the CPU).
fn thread_cpu_ns() -> Result<u64, String> {
    schedstat_ns("/proc/thread-self/schedstat")
}

/// CPU time of every thread of `pid`.
fn process_cpu_ns(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread that ended meanwhile has no schedstat any more.
        if let Ok(ns) = schedstat_ns(&task.path().join("schedstat").display().to_string()) {
            total += ns;
        }
    }
    Ok(total)
}

fn schedstat_ns(path: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{path}: unexpected contents {text:?}"))
}

fn vm_hwm(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path}: no VmHWM"))?;
    Ok(format!("{:.1} MiB", kib as f64 / 1024.0))
}

fn summary_ms(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize] / 1e6;
    let mean = values.iter().sum::<f64>() / values.len() as f64 / 1e6;
    format!(
        "mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
