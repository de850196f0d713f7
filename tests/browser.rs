//! The owner's page in a real browser: headless Chromium driven over WebDriver.
//!
//! An owner signs up on the page; a device (the device client of `src/client.rs`) registers
//! and reports positions; the page shows them in its list and on the map, "Ring" reaches the
//! device and the page shows its acknowledgement, and erase asks for the password (a wrong
//! one queues nothing). Then sign-out and sign-in with the keyboard alone (visible focus), and
//! the layout on a phone-sized screen.
//!
//! Needs `chromium` and `chromium-driver`; skipped loudly when they are missing, unless
//! `WHERESMYFOX_REQUIRE_BROWSER=1`. With `WHERESMYFOX_SCREENSHOT=path`, saves a screenshot of
//! the main view there.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use support::{PASSWORD, TestServer};
use wheresmyfox::client::{HttpClient, OwnerClient};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and its browser session, both ended on drop.
struct Driver {
    child: Child,
    port: u16,
    http: HttpClient,
    session: String,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session;
    /// `None` when the browser or the driver is not installed.
    async fn start() -> Option<Driver> {
        let browser = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(which)?;
        let driver = which("chromedriver")?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
            probe.local_addr().expect("probe address").port()
        };
        // In a process group of its own, which the browser it starts joins: see `Drop`.
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut http = HttpClient::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let mut ready = false;
        for _ in 0..100 {
            if let Ok((StatusCode::OK, body)) = http.json(Method::GET, "/status", None, None).await
                && body["value"]["ready"] == true
            {
                ready = true;
                break;
            }
            http.disconnect();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut driver = Driver {
            child,
            port,
            http,
            session: String::new(),
        };
        assert!(ready, "chromedriver did not become ready");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1100",
                         "--force-device-scale-factor=1"],
            },
        }}});
        let answer = driver
            .call(Method::POST, "/session", Some(&capabilities))
            .await;
        driver.session = answer["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Some(driver)
    }

    /// One WebDriver command; panics with the driver's message on failure.
    async fn call(&mut self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self
            .http
            .json(method, path, None, body)
            .await
            .expect("talk to chromedriver");
        assert_eq!(status, StatusCode::OK, "webdriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn session(&mut self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    async fn goto(&mut self, url: &str) {
        self.session(Method::POST, "/url", Some(&json!({ "url": url })))
            .await;
    }

    async fn find(&mut self, css: &str) -> String {
        let found = self
            .session(
                Method::POST,
                "/element",
                Some(&json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().expect("element id").to_owned()
    }

    async fn click(&mut self, css: &str) {
        let id = self.find(css).await;
        self.session(
            Method::POST,
            &format!("/element/{id}/click"),
            Some(&json!({})),
        )
        .await;
    }

    async fn type_into(&mut self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.session(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        )
        .await;
    }

    async fn script(&mut self, script: &str) -> Value {
        self.session(
            Method::POST,
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns true (in the page), up to 20 s.
    async fn until(&mut self, what: &str, script: &str) {
        for _ in 0..200 {
            if self.script(script).await == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let page = self
            .script("return document.body.innerText")
            .await
            .to_string();
        panic!("timed out waiting for {what}; the page says: {page}");
    }

    /// Presses one key (a WebDriver key code such as TAB or ENTER) on the focused element.
    async fn press(&mut self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.session(Method::POST, "/actions", Some(&actions)).await;
    }

    async fn resize(&mut self, width: u32, height: u32) {
        let rect = json!({"width": width, "height": height});
        self.session(Method::POST, "/window/rect", Some(&rect))
            .await;
    }

    async fn screenshot(&mut self) -> Vec<u8> {
        let encoded = self.session(Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64"))
            .expect("a PNG")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Killing chromedriver alone would leave its browser running, handed to init. Ending
        // the session closes the browser; then whatever is left of the group goes too.
        if !self.session.is_empty() {
            delete_session(self.port, &self.session);
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// WebDriver's "Delete Session", over a plain blocking connection (it runs in `Drop`).
fn delete_session(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.read_to_end(&mut Vec::new());
    }
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_finds_rings_and_is_asked_before_erasing() {
    let Some(mut browser) = Driver::start().await else {
        assert!(
            std::env::var("WHERESMYFOX_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "WHERESMYFOX_REQUIRE_BROWSER=1 but chromium or chromedriver is missing"
        );
        // Written to stderr directly: the test harness captures eprintln! of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIP browser test: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver); the web page was not tested in a browser ***\n"
        );
        return;
    };
    // Tiles from a loopback port nobody listens on: the page must fall back to its grid, and
    // the test never reaches the internet.
    let server = TestServer::start_with(|config| {
        config.web.tile_url = "http://127.0.0.1:9/{z}/{x}/{y}.png".into();
        config.web.tile_attribution = "test tiles".into();
    })
    .await;
    let base = format!("http://{}", server.addr);

    // Sign up on the page.
    browser.goto(&format!("{base}/")).await;
    browser
        .until(
            "the sign-in form",
            "return !document.getElementById('signin').hidden",
        )
        .await;
    browser.type_into("#email", "ada@example.com").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-up").await;
    browser
        .until(
            "the signed-in view",
            "return !document.getElementById('app').hidden",
        )
        .await;
    let cookie_visible = browser.script("return document.cookie").await;
    assert_eq!(cookie_visible, json!(""), "the session cookie is HttpOnly");

    // A phone registers and reports where it has been.
    let mut owner =
        OwnerClient::sign_in_with(HttpClient::new(server.addr), "ada@example.com", PASSWORD)
            .await
            .expect("sign in as the owner");
    let mut phone = owner
        .register_device("Ada's phone")
        .await
        .expect("register");
    let track = [
        (48.85800, 2.29450, 30.0),
        (48.86060, 2.33760, 15.0),
        (48.85300, 2.34990, 20.0),
        (48.85660, 2.35220, 8.0),
    ];
    let start = wheresmyfox::clock::now_ms() - 20 * 60_000;
    for (i, (lat, lon, acc)) in track.iter().enumerate() {
        let fix = json!({"t": {"ok": true, "la": lat, "lo": lon, "acc": acc,
                               "ti": start + i as u64 * 5 * 60_000}});
        phone
            .exchange(&fix, Some(0))
            .await
            .expect("report a position");
    }
    let (received_tx, mut received) = mpsc::unbounded_channel::<Value>();
    let device = tokio::spawn(async move {
        let act = move |commands: &serde_json::Map<String, Value>| {
            let _ = received_tx.send(Value::Object(commands.clone()));
            commands
                .keys()
                .map(|k| (k.clone(), json!({"ok": true})))
                .collect()
        };
        let _ = phone.run(20, act, std::future::pending::<()>()).await;
    });
    server.until_parked(1).await;

    // The page, reloaded, shows the phone, its positions in order and the map.
    browser.goto(&format!("{base}/")).await;
    browser
        .until(
            "the device in the list",
            "return document.querySelectorAll('#devices .device-button').length === 1",
        )
        .await;
    browser
        .until(
            "four positions",
            "return document.querySelectorAll('#positions li').length === 4",
        )
        .await;
    let listed = browser
        .script("return document.getElementById('devices').innerText")
        .await;
    assert!(
        listed.as_str().unwrap_or("").contains("Ada's phone"),
        "{listed}"
    );
    let latest = browser
        .script("return document.querySelector('#positions li').innerText")
        .await;
    assert!(
        latest.as_str().unwrap_or("").contains("48.85660, 2.35220"),
        "the newest position comes first: {latest}"
    );
    assert!(
        latest.as_str().unwrap_or("").contains("±8 m"),
        "with its accuracy: {latest}"
    );
    browser
        .until(
            "the tile fallback note",
            "return document.getElementById('map-caption').innerText.includes('plain Web Mercator grid')",
        )
        .await;
    // Something was drawn where the newest point is: the map's centre region is not blank.
    let painted = browser
        .script(
            "const c = document.getElementById('map'); const d = c.getContext('2d')\
             .getImageData(0, 0, c.width, c.height).data; let red = 0;\
             for (let i = 0; i < d.length; i += 4) { if (d[i] > 200 && d[i+1] < 40 && d[i+2] < 60) red++; }\
             return red > 50;",
        )
        .await;
    assert_eq!(painted, json!(true), "the newest position is drawn in red");

    // Ring: the phone receives it, and the page shows its acknowledgement.
    browser.click("#ring-start").await;
    let commands = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the ring reaches the phone")
        .expect("the phone is running");
    assert_eq!(commands["r"], json!({"p": 10, "d": 120}));
    browser
        .until(
            "the ring's acknowledgement",
            "return [...document.querySelectorAll('#activity li')].some(li => li.dataset.status === 'ok' && li.innerText.startsWith('Ring'))",
        )
        .await;
    let status = browser
        .script("return document.getElementById('status').innerText")
        .await;
    assert!(
        status.as_str().unwrap_or("").contains("acknowledged"),
        "the live status says so: {status}"
    );

    if let Ok(path) = std::env::var("WHERESMYFOX_SCREENSHOT") {
        browser.script("window.scrollTo(0, 0)").await;
        std::fs::write(&path, browser.screenshot().await).expect("write the screenshot");
        eprintln!("screenshot saved to {path}");
    }

    // Erase asks, naming the phone, for the password; a wrong one queues nothing.
    browser.click("#erase-open").await;
    browser
        .until(
            "the erase dialog",
            "return document.getElementById('erase-dialog').open",
        )
        .await;
    let title = browser
        .script("return document.getElementById('erase-title').innerText")
        .await;
    assert_eq!(title, json!("Erase Ada's phone?"));
    let focused = browser.script("return document.activeElement.id").await;
    assert_eq!(
        focused,
        json!("erase-password"),
        "focus moves to the password"
    );
    browser
        .type_into("#erase-password", "not my password")
        .await;
    browser.click("#erase-confirm").await;
    browser
        .until(
            "the wrong-password message",
            "return !document.getElementById('erase-error').hidden",
        )
        .await;
    let error = browser
        .script("return document.getElementById('erase-error').innerText")
        .await;
    assert!(
        error.as_str().unwrap_or("").contains("password is wrong"),
        "{error}"
    );
    let id = devices_id(&mut owner).await;
    let (_, detail) = owner
        .call(Method::GET, &format!("/1/devices/{id}"), None)
        .await
        .expect("device detail");
    assert!(
        detail["pending"]
            .as_array()
            .is_some_and(|p| p.iter().all(|c| c["command"] != "e")),
        "no erase pending after a wrong password: {detail}"
    );

    // The right password: the phone receives the erase.
    browser.type_into("#erase-password", PASSWORD).await;
    browser.click("#erase-confirm").await;
    let erase = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the erase reaches the phone")
        .expect("the phone is running");
    assert_eq!(erase["e"], json!({}));
    browser
        .until(
            "the dialog to close",
            "return !document.getElementById('erase-dialog').open",
        )
        .await;
    device.abort();

    // The keyboard alone: sign out, then sign in with Tab and Enter; focus is visible.
    browser
        .script("document.getElementById('sign-out').focus()")
        .await;
    browser.press(ENTER).await;
    browser
        .until(
            "the sign-in form again",
            "return !document.getElementById('signin').hidden && document.activeElement.id === 'email'",
        )
        .await;
    browser.type_into("#email", "ada@example.com").await;
    browser.press(TAB).await;
    let focus = browser
        .script("const e = document.activeElement; return [e.id, getComputedStyle(e).outlineStyle]")
        .await;
    assert_eq!(
        focus,
        json!(["password", "solid"]),
        "Tab moves a visible focus"
    );
    browser
        .type_into("#password", &format!("{PASSWORD}{ENTER}"))
        .await;
    browser
        .until(
            "the signed-in view after Enter",
            "return !document.getElementById('app').hidden && document.querySelectorAll('#positions li').length > 0",
        )
        .await;

    // A phone-sized screen: one column, nothing wider than the screen.
    browser.resize(390, 844).await;
    browser
        .until(
            "the narrow layout",
            "return window.innerWidth < 500 && document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
    let map_fits = browser
        .script("return document.getElementById('map').getBoundingClientRect().right <= window.innerWidth")
        .await;
    assert_eq!(map_fits, json!(true));
}

/// WebDriver key codes.
const ENTER: &str = "\u{E007}";
const TAB: &str = "\u{E004}";

async fn devices_id(owner: &mut OwnerClient) -> String {
    let (_, list) = owner
        .call(Method::GET, "/1/devices", None)
        .await
        .expect("list");
    list["devices"][0]["id"].as_str().expect("an id").to_owned()
}
