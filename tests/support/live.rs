//! Test clients of the live parts: a server-sent-events reader over a real HTTP connection,
//! and a WebDriver client driving Debian's Chromium through `chromedriver`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub kind: String,
    pub data: Value,
}

/// Reads `GET /me/events` as a client would.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The server ended the stream.
    pub ended: bool,
}

impl Sse {
    /// Opens the stream with a bearer `token`, resuming after `last_event_id` if given.
    pub async fn open(base: &str, token: &str, last_event_id: Option<i64>) -> Sse {
        Self::open_raw(
            base,
            token,
            last_event_id.map(|id| id.to_string()).as_deref(),
        )
        .await
    }

    /// Like [`Sse::open`], with any `Last-Event-ID` text.
    pub async fn open_raw(base: &str, token: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new()
            .get(format!("{base}/me/events"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let response = req.send().await.expect("stream opens");
        Sse {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            response,
            buffer: String::new(),
            ended: false,
        }
    }

    /// The next event within `within`, or `None`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a keep-alive comment
                }
                return Some(SseEvent {
                    id,
                    kind,
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                Ok(_) => {
                    self.ended = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// The next event of `kind`, skipping others, within `within`.
    pub async fn next_of(&mut self, kind: &str, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next(left).await?;
            if event.kind == kind {
                return Some(event);
            }
        }
    }

    /// Every event arriving within `within`.
    pub async fn drain(&mut self, within: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut events = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(e) => events.push(e),
                None => break,
            }
        }
        events
    }
}

/// The flags Chromium runs with here: headless, no network beyond loopback.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    AUTOPLAY,
    "--window-size=1000,800",
];

/// The flag that lets pages play sound before the person clicks.
pub const AUTOPLAY: &str = "--autoplay-policy=no-user-gesture-required";
/// The flag that blocks sound until the person clicks or types on the page (a browser's
/// default policy varies with the user and the machine; this one does not).
pub const BLOCK_AUTOPLAY: &str = "--autoplay-policy=document-user-activation-required";

/// A `chromedriver` process; stopped (by its PID) when dropped.
pub struct Driver {
    child: Child,
    port: u16,
    http: reqwest::Client,
    artifacts: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free port; screenshots of failing steps go to `artifacts`.
    pub async fn start(artifacts: &Path) -> Driver {
        let port = super::free_port();
        // A process group of its own, holding the browsers it starts, so that a test that
        // fails halfway stops them all (they outlive chromedriver otherwise).
        let child = Command::new(super::system::program("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver is installed (scripts/services installs chromium-driver)");
        std::fs::create_dir_all(artifacts).unwrap();
        let driver = Driver {
            child,
            port,
            http: reqwest::Client::new(),
            artifacts: artifacts.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver.http.get(driver.url("/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method.clone(), path, body)
            .await
            .unwrap_or_else(|(status, value)| panic!("WebDriver {method} {path}: {status} {value}"))
    }

    /// A WebDriver call; `Err` with the status and the answer when it fails.
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (reqwest::StatusCode, Value)> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("chromedriver answers");
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value["value"].clone())
        } else {
            Err((status, value))
        }
    }

    /// A new browser with its own empty profile (its own cookies).
    pub async fn browser(&self, name: &str) -> Browser<'_> {
        self.browser_without(name, &[]).await
    }

    /// A new browser run without the flags `without` (for example the autoplay flag, to see
    /// the page as a browser that blocks audio until the person clicks).
    pub async fn browser_without(&self, name: &str, without: &[&str]) -> Browser<'_> {
        self.browser_args(name, without, &[]).await
    }

    /// A new browser run without the flags `without` and with the flags `with`.
    pub async fn browser_args(&self, name: &str, without: &[&str], with: &[&str]) -> Browser<'_> {
        let profile = self.artifacts.join(format!("profile-{name}"));
        let mut args: Vec<String> = CHROMIUM_ARGS
            .iter()
            .filter(|a| !without.contains(a))
            .chain(with)
            .map(|a| a.to_string())
            .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let binary = ["chromium", "chromium-browser"]
            .map(super::system::program)
            .into_iter()
            .find(|p| p.is_absolute())
            .unwrap_or_else(|| "/usr/bin/chromium".into());
        let session = self
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": binary, "args": args},
                    "goog:loggingPrefs": {"browser": "ALL"},
                }}})),
            )
            .await;
        Browser {
            driver: self,
            session: session["sessionId"].as_str().unwrap().to_string(),
            name: name.to_string(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's PID.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Browser<'a> {
    driver: &'a Driver,
    session: String,
    name: String,
}

impl Browser<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Runs `script` (a function body that calls `arguments[arguments.length - 1]` with its
    /// result) and returns that result.
    pub async fn js_async(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Sets the site's permission `name` (for example `notifications`) to `state`, as the
    /// person would in the browser's site settings.
    pub async fn set_permission(&self, name: &str, state: &str) {
        self.call(
            reqwest::Method::POST,
            "/permissions",
            Some(json!({"descriptor": {"name": name}, "state": state})),
        )
        .await;
    }

    /// Brings the current tab and its window to the front, as a person clicking on it does.
    pub async fn to_front(&self) {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": "Page.bringToFront", "params": {}})),
        )
        .await;
    }

    /// Minimizes the window: its pages are hidden and lose focus.
    pub async fn minimize(&self) {
        self.call(reqwest::Method::POST, "/window/minimize", Some(json!({})))
            .await;
    }

    /// The serious and critical accessibility violations axe-core finds on the page as it is
    /// now (axe-core from the npm registry, installed by `scripts/services`), as
    /// `rule: target…` lines.
    pub async fn axe(&self) -> Vec<String> {
        let source = std::fs::read_to_string(axe_path()).unwrap_or_else(|e| {
            panic!(
                "axe-core at {} ({e}); scripts/services installs it",
                axe_path().display()
            )
        });
        let found = self
            .js_async(
                &format!(
                    "{source}\n;const done = arguments[arguments.length - 1];\
                     axe.run(document, {{ resultTypes: ['violations'] }})\
                       .then((r) => done(r.violations.map((v) => ({{ id: v.id, impact: v.impact,\
                         targets: v.nodes.map((n) => n.target.join(' ')) }}))))\
                       .catch((e) => done([{{ id: 'axe failed: ' + e, impact: 'critical', targets: [] }}]));"
                ),
                json!([]),
            )
            .await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .map(|v| format!("{} ({}): {}", v["id"], v["impact"], v["targets"]))
            .collect()
    }

    /// Clicks the element `css` as a user does (WebDriver element click).
    pub async fn click(&self, css: &str) {
        self.on_element(css, "click", json!({})).await;
    }

    /// Leaves exactly one of the week's day checkboxes ticked, by clicking those that differ:
    /// `css_of(day)` finds the box of `mon` … `sun`.
    pub async fn tick_only_day(&self, css_of: impl Fn(&str) -> String, day: &str) {
        for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] {
            let css = css_of(d);
            let checked = self
                .js(
                    &format!("return document.querySelector({}).checked;", json!(css)),
                    json!([]),
                )
                .await
                == json!(true);
            if checked != (d == day) {
                self.click(&css).await;
            }
        }
    }

    /// Empties the field `css` (WebDriver element clear).
    pub async fn clear(&self, css: &str) {
        self.on_element(css, "clear", json!({})).await;
    }

    /// Types `text` into the element `css` with the keyboard.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({"text": text})).await;
    }

    /// Sends `action` to the element `css`. When the page re-rendered it between finding and
    /// acting (a live event redraws the list), it is found again, as a person would look at
    /// the screen again: at most 5 times.
    async fn on_element(&self, css: &str, action: &str, body: Value) {
        for attempt in 1.. {
            let element = self.element(css).await;
            let path = format!("/element/{element}/{action}");
            let path = format!("/session/{}{path}", self.session);
            match self
                .driver
                .try_call(reqwest::Method::POST, &path, Some(body.clone()))
                .await
            {
                Ok(_) => return,
                Err((_, value))
                    if attempt < 5 && value["value"]["error"] == "stale element reference" =>
                {
                    continue;
                }
                Err((status, value)) => panic!("WebDriver {action} on {css}: {status} {value}"),
            }
        }
    }

    /// The element `css`, waiting up to 10 s for it to appear.
    async fn element(&self, css: &str) -> String {
        let present = format!("document.querySelector({}) !== null", json!(css));
        self.wait_until(&format!("find {css}"), &present, Duration::from_secs(10))
            .await;
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    /// Opens a new tab and switches to it; returns (old, new) window handles.
    pub async fn new_tab(&self) -> (String, String) {
        let old = self.call(reqwest::Method::GET, "/window", None).await;
        let new = self
            .call(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({"type": "tab"})),
            )
            .await;
        let new = new["handle"].as_str().unwrap().to_string();
        self.switch_to(&new).await;
        (old.as_str().unwrap().to_string(), new)
    }

    pub async fn switch_to(&self, handle: &str) {
        self.call(
            reqwest::Method::POST,
            "/window",
            Some(json!({"handle": handle})),
        )
        .await;
    }

    /// Sets the window's size (for the narrow-screen check).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Saves a screenshot as `<artifacts>/<name>-<step>.png`; returns its path.
    pub async fn screenshot(&self, step: &str) -> PathBuf {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap_or_default();
        let path = self
            .driver
            .artifacts
            .join(format!("{}-{step}.png", self.name));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Waits up to `within` until `condition` (a JS expression) is true; on timeout saves a
    /// screenshot of the step and fails with the page's state.
    pub async fn wait_until(&self, step: &str, condition: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let script = format!("return Boolean({condition});");
        loop {
            if self.js(&script, json!([])).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot(step).await;
                let body = self.js("return document.body.innerText;", json!([])).await;
                panic!(
                    "{}: {step}: `{condition}` not true within {within:?}; screenshot {}; page:\n{}",
                    self.name,
                    shot.display(),
                    body.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The browser console's errors so far (severe entries).
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
    }
}

/// Where `scripts/services` installs axe-core: `TIDINGS_AXE`, or the user's cache.
fn axe_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDINGS_AXE") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("tidings/axe-core/node_modules/axe-core/axe.min.js")
}
