//! The dashboard in a real browser: headless Chromium (Debian package
//! `chromium`; scripts/test.sh installs it) loads `/` of a supd with four
//! agents and a running job, and the rendered page shows every node and the
//! job. A node is then cordoned with supctl and the same page, never
//! reloaded, shows it cordoned. The screenshot it takes is the README's
//! (`SUP_SCREENSHOT_TO_DOCS=1` writes it to docs/dashboard.png).
//!
//! Chromium is driven over the DevTools protocol through
//! `--remote-debugging-pipe` (JSON messages ended by NUL on fds 3 and 4):
//! no port, no websocket client, nothing that another test could reach.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sup_e2e::*;

/// One headless Chromium and its DevTools pipe; killed when dropped.
struct Browser {
    child: Child,
    input: ChildStdin,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    log: std::path::PathBuf,
}

fn chromium() -> Result<String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return Ok(name.to_owned());
        }
    }
    bail!("chromium not found: install the Debian package 'chromium' (scripts/test.sh does)")
}

impl Browser {
    fn launch(url: &str, work: &std::path::Path) -> Result<Browser> {
        let profile = work.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let log = work.join("chromium.log");
        // The shell only moves the pipe ends to fds 3 (commands in) and 4
        // (replies out), where --remote-debugging-pipe expects them, then
        // becomes Chromium (exec), so killing the child kills the browser.
        let script = r#"exec "$BROWSER" --headless --no-sandbox --disable-gpu --disable-quic \
            --no-first-run --disable-background-networking --disable-component-update \
            --disable-sync --disable-dev-shm-usage --hide-scrollbars --window-size=1400,1000 \
            --user-data-dir="$PROFILE" --remote-debugging-pipe "$URL" \
            3<&0 4>&1 0</dev/null 1>>"$LOG" 2>&1"#;
        let mut child = Command::new("bash")
            .args(["-c", script])
            .env("BROWSER", chromium()?)
            .env("PROFILE", &profile)
            .env("URL", url)
            .env("LOG", &log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromium")?;
        let input = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no pipe to chromium"))?;
        let output = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no pipe from chromium"))?;
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(output);
            let mut buf = Vec::new();
            while let Ok(n) = reader.read_until(0, &mut buf) {
                if n == 0 {
                    break;
                }
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        Ok(Browser {
            child,
            input,
            replies,
            next_id: 1,
            session: None,
            log,
        })
    }

    /// One DevTools command; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(0);
        self.input
            .write_all(&bytes)
            .and_then(|()| self.input.flush())
            .with_context(|| format!("sending {method} to chromium"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self.replies.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "no reply to {method} from chromium; its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            })?;
            if reply["id"] == id {
                if let Some(err) = reply.get("error") {
                    bail!("{method} failed: {err}");
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    /// Attaches to the page the browser opened with the URL.
    fn attach(&mut self) -> Result<()> {
        let target = wait_for("chromium's page target", STARTUP_TIMEOUT, || {
            let targets = self.call("Target.getTargets", json!({}))?;
            Ok(targets["targetInfos"].as_array().and_then(|all| {
                all.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["targetId"].as_str().map(str::to_owned))
            }))
        })?;
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {attached}"))?;
        self.session = Some(session.to_owned());
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page; its JSON value.
    fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression} threw: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    fn screenshot(&mut self) -> Result<Vec<u8>> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": false }),
        )?;
        let data = r["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data"))?;
        base64_decode(data)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("bad base64 byte {c}"),
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let digits: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in digits.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..digits.len().max(1)]);
    }
    Ok(out)
}

/// `promtool check metrics` (Debian package `prometheus`) on `/metrics` of
/// this cluster while its job runs, so the job series are validated too.
fn check_job_metrics(url: &str, http_port: u16) -> Result<()> {
    let body = wait_for("job series in /metrics", STARTUP_TIMEOUT, || {
        let (code, body) = http_get(http_port, "/metrics")?;
        Ok((code == 200
            && body.contains("sup_job_step{")
            && body.contains("sup_job_since_checkpoint_seconds{"))
        .then_some(body))
    })
    .with_context(|| {
        // What the job did instead: its state, step and events.
        let job = job_status(url, "llm-demo").map_or_else(|e| e.to_string(), |j| j.to_string());
        let events = sup_e2e::supctl_json(url, &["events"])
            .map_or_else(|e| e.to_string(), |e| e.to_string());
        format!("the job: {job}\nevents: {events}")
    })?;
    sup_e2e::promtool_check(&body)?;
    for series in [
        "sup_job_world_size{",
        "sup_job_generation{",
        "sup_job_restarts{",
        "sup_nodes{",
        "sup_spare_nodes ",
        "sup_breaker_open ",
        "sup_build_info{",
        "sup_recovery_latency_seconds_bucket{",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    Ok(())
}

/// Node id → (state, cordon reason) and job name → state, as the page shows
/// them.
const PAGE_STATE: &str = r#"JSON.stringify({
  nodes: Object.fromEntries([...document.querySelectorAll('#nodes .node')].map(e => [e.dataset.id, [e.dataset.state, e.dataset.cordon, e.title]])),
  jobs: Object.fromEntries([...document.querySelectorAll('#jobs tbody tr[data-state]')].map(r => [r.id.replace(/^job-/, ''), r.dataset.state])),
  live: document.getElementById('conn').textContent,
  marker: window.__supTestMarker || null
})"#;

/// The job's goodput bar as rendered: its segments' buckets, the productive
/// one's laid-out width in pixels, style width and title, and the ETTR.
const GOODPUT_BAR: &str = r#"(() => {
  const row = document.getElementById('job-llm-demo');
  const bar = row && row.querySelector('.gpbar');
  if (!bar) return 'null';
  const p = bar.querySelector('.gp.gp-productive[data-bucket="productive"]');
  const ettr = row.querySelector('.gpbox .gpv');
  return JSON.stringify({
    segments: [...bar.querySelectorAll('.gp')].map(s => s.dataset.bucket),
    bar_px: bar.getBoundingClientRect().width,
    bar_title: bar.title,
    productive_px: p ? p.getBoundingClientRect().width : 0,
    productive_width: p ? p.style.width : null,
    productive_title: p ? p.title : null,
    ettr: ettr ? ettr.textContent : null
  });
})()"#;

#[test]
fn dashboard_shows_nodes_job_and_a_cordon_live() -> Result<()> {
    let work = tempfile::tempdir()?;
    let master_port = free_port()?;
    let mut supd = Supd::new(
        work.path(),
        &format!(
            "[nodes]\ntelemetry_interval = \"500ms\"\n[jobs]\nmaster_port = {master_port}\nstop_grace = \"3s\"\nspares_target = 1\n"
        ),
    )?;
    supd.start()?;
    let url = supd.url();
    let ids = ["dash-a", "dash-b", "dash-c", "dash-d"];
    let mut agents = Vec::new();
    for id in ids {
        agents.push(start_agent(
            work.path(),
            &url,
            id,
            "127.0.0.1",
            "sim:4",
            &[
                "--allow-drills",
                "--state-dir",
                &work.path().join(id).display().to_string(),
            ],
        )?);
    }
    wait_ready_nodes(&url, ids.len())?;

    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    let spec = format!(
        "name = \"llm-demo\"\ncommand = {}\nnodes = 2\ngpus_per_node = 1\ncheckpoint_dir = \"{}\"\ncheckpoint_layout = \"marker:COMPLETE\"\n",
        toml_list(&trainer_command(100_000, 10, "0.2", 64)),
        ckpt.display()
    );
    let spec_file = work.path().join("job.toml");
    std::fs::write(&spec_file, spec)?;
    let out = supctl(&url, &["job", "submit", &spec_file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for("the job running", STARTUP_TIMEOUT, || {
        Ok((job_status(&url, "llm-demo")?["state"] == "running").then_some(()))
    })?;

    check_job_metrics(&url, supd.http_port)?;

    let page = format!("http://127.0.0.1:{}/", supd.http_port);
    let mut browser = Browser::launch(&page, work.path())?;
    browser.attach()?;
    let shown = wait_for(
        "every node and the job on the page",
        STARTUP_TIMEOUT,
        || {
            let state: Value =
                serde_json::from_str(browser.eval(PAGE_STATE)?.as_str().unwrap_or("{}"))?;
            let all = ids.iter().all(|id| state["nodes"].get(id).is_some());
            Ok((all && state["jobs"]["llm-demo"] == "running").then_some(state))
        },
    )?;
    assert_eq!(shown["live"], "live", "{shown}");

    // The job's goodput bar, as Chromium laid it out: once the job has
    // booked productive time, a productive segment of non-zero rendered
    // width whose title says so, the bar's title naming every bucket, and
    // the ETTR beside it.
    let bar = wait_for(
        "the job's goodput bar with a productive segment",
        Duration::from_secs(30),
        || {
            let bar: Value =
                serde_json::from_str(browser.eval(GOODPUT_BAR)?.as_str().unwrap_or("null"))?;
            Ok((bar["productive_px"].as_f64().unwrap_or(0.0) > 0.0).then_some(bar))
        },
    )?;
    assert!(
        bar["bar_px"].as_f64().unwrap_or(0.0) >= bar["productive_px"].as_f64().unwrap_or(0.0),
        "{bar}"
    );
    assert!(
        bar["productive_title"]
            .as_str()
            .is_some_and(|t| t.starts_with("productive: ") && t.ends_with("%)")),
        "{bar}"
    );
    assert!(
        bar["productive_width"]
            .as_str()
            .is_some_and(|w| w.ends_with('%') && w != "0.00%"),
        "{bar}"
    );
    let title = bar["bar_title"].as_str().unwrap_or_default();
    for bucket in [
        "productive",
        "redone",
        "detection",
        "restart",
        "checkpoint_save",
        "waiting",
        "stopped",
    ] {
        assert!(title.contains(&format!("{bucket} ")), "{bucket}: {bar}");
    }
    let segments = bar["segments"].as_array().cloned().unwrap_or_default();
    assert!(
        segments.iter().any(|s| s == "productive"),
        "segments: {bar}"
    );
    assert!(
        bar["ettr"].as_str().is_some_and(|e| e.ends_with('%')),
        "ETTR: {bar}"
    );

    // A mark in the page's memory: still there afterwards proves no reload.
    browser.eval("window.__supTestMarker = 'same page'; 1")?;
    let victim = ids
        .iter()
        .find(|id| shown["nodes"][**id][0] == "ready")
        .ok_or_else(|| anyhow!("no ready node on the page: {shown}"))?;
    let out = supctl(
        &url,
        &["cordon", victim, "--reason", "HBM errors, ticket OPS-1"],
    )?;
    if !out.status.success() {
        bail!("cordon failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let after = wait_for("the cordon on the page", Duration::from_secs(30), || {
        let state: Value =
            serde_json::from_str(browser.eval(PAGE_STATE)?.as_str().unwrap_or("{}"))?;
        Ok((state["nodes"][*victim][0] == "cordoned").then_some(state))
    })?;
    assert_eq!(
        after["marker"], "same page",
        "the page was reloaded: {after}"
    );
    let reason = after["nodes"][*victim][1].as_str().unwrap_or_default();
    assert!(reason.contains("HBM errors, ticket OPS-1"), "{after}");
    for id in ids {
        assert!(after["nodes"].get(id).is_some(), "{id} vanished: {after}");
    }

    // For the picture, a recovery in progress: Xid 79 (fallen off the bus)
    // on a node of the job, which fails that GPU and moves the job to the
    // spare. Only the page is checked here; tests/gpu_faults.rs and
    // tests/elastic.rs check the recovery itself.
    let job = job_status(&url, "llm-demo")?;
    if let Some(node) = job["nodes"]
        .as_array()
        .and_then(|n| n.first())
        .and_then(Value::as_str)
    {
        let out = supctl(
            &url,
            &["drill", "xid", "--node", node, "--gpu", "1", "--xid", "79"],
        )?;
        if out.status.success() {
            let node = node.to_owned();
            wait_for(
                "the failed GPU on the page",
                Duration::from_secs(30),
                || {
                    let shown = browser.eval(&format!(
                        "document.querySelectorAll('#node-{node} .gpu.h-f').length"
                    ))?;
                    Ok((shown.as_u64().unwrap_or(0) > 0).then_some(()))
                },
            )?;
        }
    }
    // Let the chart gather a few points, then take the picture.
    std::thread::sleep(Duration::from_secs(4));
    let png = browser.screenshot()?;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let shot = bin_dir()?.join("dashboard.png");
    std::fs::write(&shot, &png)?;
    if std::env::var_os("SUP_SCREENSHOT_TO_DOCS").is_some() {
        std::fs::write(repo_root().join("docs/dashboard.png"), &png)?;
    }
    eprintln!("screenshot: {}", shot.display());
    drop(browser);
    let _ = supctl(&url, &["job", "stop", "llm-demo"]);
    wait_for("the ranks stopped", Duration::from_secs(30), || {
        let left = processes_with_env(&[("SUP_CHECKPOINT_DIR", &ckpt.display().to_string())]);
        Ok(left.is_empty().then_some(()))
    })?;
    drop(agents);
    supd.kill()?;
    Ok(())
}
