//! The web console in a real headless Chromium (Debian's, driven through
//! its chromedriver): sign in with a token, watch a task submitted through
//! the API appear and turn SUCCESS, open its page, requeue a dead letter.
//! Screenshots of the main pages go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::support::{Fixture, ServeProcess, free_port, wait_for, workspace_root};

/// chromedriver and a browser session on it; both end on drop.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed");
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // --no-sandbox: the tests may run as root (CI containers).
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            }
        });
        let caps = caps.as_object().expect("an object").clone();
        let client = wait_for(
            "chromedriver to start a session",
            Duration::from_secs(30),
            async || {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector)
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await
                    .ok()
            },
        )
        .await;
        Self { driver, client }
    }

    /// The text of the first element matching `css`, once there.
    async fn text(&self, css: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.ok()?;
        e.text().await.ok()
    }

    async fn wait_text(&self, what: &str, css: &str, want: &str) {
        wait_for(what, Duration::from_secs(60), async || {
            self.text(css).await.is_some_and(|t| t.trim() == want)
        })
        .await;
    }

    /// Type `token` into the sign-in form and submit it.
    async fn sign_in(&self, input: &fantoccini::elements::Element, token: &str) {
        input.clear().await.expect("clear the token field");
        input.send_keys(token).await.expect("type the token");
        let button = self.client.find(Locator::Css("#signin")).await;
        button
            .expect("the sign-in button")
            .click()
            .await
            .expect("click");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshots() -> PathBuf {
    workspace_root().join("target/console-screenshots")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_signs_in_shows_tasks_live_and_requeues_dead_letters() {
    let f = Fixture::new(&["math"]).await;
    // A dead letter to requeue: a message no worker can read.
    let garbage = celeriac_broker::Outgoing {
        queue: "default".into(),
        payload: "not a message".into(),
        due_ms: None,
    };
    f.broker.enqueue(&[garbage]).await.expect("enqueue");
    let _worker = f.worker_process("w-console", &[]);
    let server = ServeProcess::start(f.cli(), f.cache_dir(), &[]).await;
    let api = server.admin();
    let dead = wait_for("a dead letter", Duration::from_secs(30), async || {
        let (_, l) = api.get("/api/v1/dead-letters?queue=default").await;
        l.as_array()
            .and_then(|l| l.first())
            .and_then(|d| d["id"].as_str())
            .map(str::to_string)
    })
    .await;
    // Some traffic, so the charts have something to draw.
    let tasks: Vec<_> = (0..40)
        .map(|i| json!({"task": "math.add", "args": [i, i]}))
        .collect();
    let (status, _) = api
        .post("/api/v1/tasks/batch", &json!({"tasks": tasks}))
        .await;
    assert_eq!(status, 202);

    let b = Browser::start().await;
    let c = &b.client;
    c.goto(&format!("{}/console/", server.base))
        .await
        .expect("open the console");
    // Signing in: a wrong token is refused with the server's reason.
    let token_input = c
        .wait()
        .for_element(Locator::Css("#token"))
        .await
        .expect("the sign-in form");
    b.sign_in(&token_input, "cel_wrong").await;
    wait_for("the sign-in error", Duration::from_secs(20), async || {
        b.text("#signin-error")
            .await
            .is_some_and(|t| t.contains("unknown token"))
    })
    .await;
    b.sign_in(&token_input, &server.admin_token).await;
    b.wait_text("signed in as admin", "#whoami-name", "admin")
        .await;
    b.wait_text("the event stream live", "#live", "live").await;

    // A task submitted through the API appears live and turns SUCCESS.
    c.goto(&format!("{}/console/#/tasks", server.base))
        .await
        .expect("tasks page");
    let (_, sent) = api
        .post(
            "/api/v1/tasks",
            &json!({"task": "math.mul", "args": [6, 7]}),
        )
        .await;
    let id = sent["id"].as_str().expect("an id").to_string();
    let row = format!("#tasks tr[data-task-id='{id}'] td.state");
    b.wait_text("the task's row to show SUCCESS", &row, "SUCCESS")
        .await;
    b.screenshot("tasks").await;

    // Its page: state, result, worker.
    c.goto(&format!("{}/console/#/task/{id}", server.base))
        .await
        .expect("task page");
    b.wait_text("the task page's state", "#task-state", "SUCCESS")
        .await;
    let fields = b.text("#task-fields").await.unwrap_or_default();
    assert!(
        fields.contains("42") && fields.contains("w-console"),
        "{fields}"
    );
    b.screenshot("task").await;

    // Dead letters: requeue from the page; the letter leaves the list.
    c.goto(&format!("{}/console/#/dead-letters", server.base))
        .await
        .expect("dead letters");
    let button = format!("#dead-letters tr[data-id='{dead}'] button.requeue");
    let requeue = c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&button))
        .await
        .expect("a requeue button");
    b.screenshot("dead-letters").await;
    requeue.click().await.expect("click requeue");
    wait_for(
        "the requeued row to go",
        Duration::from_secs(30),
        async || {
            c.find(Locator::Css(&format!("#dead-letters tr[data-id='{dead}']")))
                .await
                .is_err()
        },
    )
    .await;
    let (_, left) = api.get("/api/v1/dead-letters?queue=default").await;
    assert!(
        left.as_array()
            .is_some_and(|l| l.iter().all(|d| d["id"] != json!(dead))),
        "{left}"
    );

    // The other main pages, for the README and for people.
    for page in ["components", "workers", "failures", "overview"] {
        c.goto(&format!("{}/console/#/{page}", server.base))
            .await
            .expect("page");
        // Charts draw from the history the server samples every 2 s.
        tokio::time::sleep(Duration::from_millis(if page == "overview" {
            5000
        } else {
            1500
        }))
        .await;
        b.screenshot(page).await;
        if page == "components" {
            let row = c
                .find(Locator::Css("#components tr[data-module='math']"))
                .await;
            assert!(row.is_ok(), "math is not listed");
        }
    }
    assert!(
        c.find(Locator::Css("#chart-throughput canvas"))
            .await
            .is_ok()
    );
    for name in [
        "overview",
        "tasks",
        "task",
        "dead-letters",
        "components",
        "workers",
    ] {
        let png = std::fs::metadata(screenshots().join(format!("{name}.png"))).expect("saved");
        assert!(png.len() > 10_000, "{name}.png is {} bytes", png.len());
    }
    // Ends the browser too (dropping only stops chromedriver).
    b.client.clone().close().await.expect("close the session");
}
