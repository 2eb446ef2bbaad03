//! The usage page in a real headless Chromium: paste a key, see API Calls Today, 100 log rows, the
//! limits in the org's local time, the billing chart and the polling advice; save a screenshot to
//! `target/artifacts/usage-page.png`.
//!
//! Without Chromium or chromedriver the test prints `SKIP: ...` and passes, except under `CI=true`
//! where it fails (`.ci/install-chromium.sh` installs both).

mod usage_fixture;

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::Value;
use tollhouse_core::Timestamp;
use tollhouse_tests::browser::{Browser, LaunchError, artifacts_dir, poll_until, skip_or_fail};
use usage_fixture::{Call, DAY, Harness, START, uint};

const WAIT: Duration = Duration::from_secs(15);
const KEY: &str = "acme-key-1";
const STORAGE_KEY: &str = "tollhouse.usage.key";

/// A day of an integration's traffic; returns how many calls were admitted today.
fn busy_day(h: &Harness) -> u64 {
    let before = |secs: u64| {
        Timestamp::from_millis(START.as_millis() - i64::try_from(secs * 1000).expect("ms"))
    };
    // Some history for the billing chart.
    for (days_ago, calls) in [(20, 35), (9, 80), (6, 52), (5, 41), (2, 75), (1, 64)] {
        h.set(before(days_ago * DAY));
        for _ in 0..calls {
            h.admit(&Call::get("acme-key-2", "/v1/items"));
            h.advance_secs(20);
        }
    }
    h.set(START);
    let mut admitted = 0;
    for i in 0..130u64 {
        if i % 2 == 0 {
            // A poller asking the same thing every 30 seconds.
            h.admit(&Call::get(KEY, "/v1/items?status=open"));
        } else if i % 5 == 1 {
            h.admit(&Call {
                method: "POST",
                status: 201,
                latency_ms: 35,
                ..Call::get("acme-key-2", "/v1/items")
            });
        } else {
            h.admit(&Call {
                cost: 10,
                latency_ms: 1_450,
                ..Call::get(KEY, "/v1/reports?month=2026-03")
            });
        }
        admitted += 1;
        h.advance_secs(15);
    }
    h.reject(
        &Call {
            cost: 10,
            ..Call::get(KEY, "/v1/reports?month=2026-02")
        },
        "points",
    );
    h.exempt(&Call {
        route: Some("/v1/files/{id}"),
        latency_ms: 310,
        ..Call::get(KEY, "/v1/files/42")
    });
    admitted
}

async fn text_of(client: &Client, css: &str) -> Result<String, String> {
    client
        .find(Locator::Css(css))
        .await
        .map_err(|error| format!("no {css}: {error}"))?
        .text()
        .await
        .map_err(|error| error.to_string())
}

async fn script(client: &Client, source: &str) -> Value {
    client
        .execute(source, Vec::new())
        .await
        .unwrap_or_else(|error| panic!("script {source:?}: {error}"))
}

/// Waits until `#calls-today` shows `expected`.
async fn wait_for_calls_today(client: &Client, expected: u64) {
    poll_until("API Calls Today to show the count", WAIT, || async move {
        let text = text_of(client, "#calls-today").await?;
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        if digits == expected.to_string() {
            Ok(())
        } else {
            let status = text_of(client, "#status").await.unwrap_or_default();
            Err(format!("{text:?} (status: {status:?})"))
        }
    })
    .await;
}

/// A headless Chromium, or `None` after saying why there is none (a failure under `CI=true`).
async fn launch() -> Option<Browser> {
    match Browser::launch().await {
        Ok(browser) => Some(browser),
        Err(LaunchError::Missing(why)) => {
            skip_or_fail(&why);
            None
        }
        Err(error) => panic!("{error}"),
    }
}

/// Opens `/usage` on `base` and waits for its key input.
async fn open_usage_page(client: &Client, base: &str) {
    client
        .goto(&format!("{base}/usage"))
        .await
        .expect("open /usage");
    poll_until("the API key input", WAIT, || async move {
        client
            .find(Locator::Css("#api-key"))
            .await
            .map_err(|error| error.to_string())
    })
    .await;
}

/// Types `key` into the page's key input and submits the form.
async fn submit_key(client: &Client, key: &str) {
    client
        .find(Locator::Css("#api-key"))
        .await
        .expect("the key input")
        .send_keys(key)
        .await
        .expect("type the key");
    client
        .find(Locator::Css("#key-submit"))
        .await
        .expect("the submit button")
        .click()
        .await
        .expect("submit");
}

#[tokio::test]
async fn the_usage_page_shows_calls_today_and_the_last_100_calls() {
    let Some(browser) = launch().await else {
        return;
    };
    let h = Harness::start().await;
    let admitted = busy_day(&h);
    let usage = h.json("/v1/usage", KEY).await;
    assert_eq!(uint(&usage, "calls_today"), admitted);

    let client = browser.client();
    open_usage_page(client, &h.base).await;
    browser
        .screenshot_full_page(&artifacts_dir().join("usage-page-key.png"), 1280, 1200)
        .await
        .expect("screenshot of the key form");
    submit_key(client, KEY).await;

    wait_for_calls_today(client, admitted).await;
    let rows = poll_until("100 rows in the log", WAIT, || async move {
        let rows = client
            .find_all(Locator::Css("#log-rows tr"))
            .await
            .map_err(|error| error.to_string())?;
        if rows.len() == 100 {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    })
    .await;
    // Newest first: the exempt file download, then the rejection. (The log is still folded, so
    // read the rows' text content rather than their rendered text.)
    let first = rows[0]
        .prop("textContent")
        .await
        .expect("row text")
        .unwrap_or_default();
    assert!(first.contains("/v1/files/42"), "{first}");
    assert!(first.contains("exempt"), "{first}");
    let second = rows[1]
        .prop("textContent")
        .await
        .expect("row text")
        .unwrap_or_default();
    assert!(second.contains("rejected"), "{second}");
    assert!(second.contains("points"), "{second}");
    assert!(second.contains("429"), "{second}");
    assert!(!first.contains(KEY), "keys are masked in the log: {first}");

    // The key is in this tab's session storage, not in the URL, and not left in the input.
    let url = client.current_url().await.expect("url");
    assert!(!url.as_str().contains(KEY), "{url}");
    assert_eq!(
        script(
            client,
            &format!("return sessionStorage.getItem('{STORAGE_KEY}');")
        )
        .await,
        KEY
    );
    assert_eq!(
        script(client, "return document.getElementById('api-key').value;").await,
        ""
    );

    // Every limit is a bar; the daily one resets at midnight in Amsterdam (23:00 UTC).
    let limits = client
        .find_all(Locator::Css("#limits li.limit [role=meter]"))
        .await
        .expect("limit bars");
    assert_eq!(limits.len(), 3);
    let daily_reset = text_of(client, "[data-limit=daily] .limit-reset")
        .await
        .expect("daily reset");
    assert!(
        daily_reset.contains("00:00") && !daily_reset.contains("23:00"),
        "reset in the org's local time: {daily_reset}"
    );
    let daily_left = text_of(client, "[data-limit=daily] .limit-remaining")
        .await
        .expect("daily remaining");
    let daily_left: String = daily_left.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(daily_left, (2500 - admitted).to_string());

    // The chart has a bar per day, today last; the poller is reported with advice.
    let bars = script(
        client,
        "return Array.from(document.querySelectorAll('#billing-chart rect')).map(r => [r.dataset.date, Number(r.dataset.billable)]);",
    )
    .await;
    let bars = bars.as_array().expect("bars");
    assert_eq!(bars.len(), 31);
    assert_eq!(bars[30], serde_json::json!(["2026-03-14", admitted + 2]));
    assert_eq!(bars[29], serde_json::json!(["2026-03-13", 64]));
    let poll = text_of(client, "#repeated li[data-path='/v1/items?status=open']")
        .await
        .expect("the poller is reported");
    assert!(poll.contains("65 times"), "{poll}");
    assert!(poll.contains("30 s"), "{poll}");
    let advice = text_of(client, "#advice").await.expect("advice");
    for tip in ["polling interval", "webhooks", "batches"] {
        assert!(advice.contains(tip), "advice mentions {tip}: {advice}");
    }

    // Nothing came from another host.
    let resources = script(
        client,
        "return performance.getEntriesByType('resource').map(e => e.name);",
    )
    .await;
    for resource in resources.as_array().expect("resources") {
        let resource = resource.as_str().expect("a URL");
        assert!(
            resource.starts_with(&h.base),
            "loaded from elsewhere: {resource}"
        );
    }

    // "view logs" opens the list; then the screenshot.
    client
        .find(Locator::Css("#logs-summary"))
        .await
        .expect("view logs")
        .click()
        .await
        .expect("open the logs");
    poll_until("the log to open", WAIT, || async move {
        match script(client, "return document.getElementById('logs').open;").await {
            Value::Bool(true) => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    let shot = artifacts_dir().join("usage-page.png");
    let bytes = browser
        .screenshot_full_page(&shot, 1280, 6000)
        .await
        .expect("screenshot");
    let png = std::fs::read(&shot).expect("the screenshot file");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        bytes > 20_000,
        "a real page, not a blank one: {bytes} bytes"
    );
    println!("screenshot: {}", shot.display());

    // A reload finds the key in session storage and shows the usage without asking.
    client.refresh().await.expect("reload");
    wait_for_calls_today(client, admitted).await;

    // Forgetting the key removes it and asks again.
    client
        .find(Locator::Css("#forget-key"))
        .await
        .expect("forget key")
        .click()
        .await
        .expect("forget");
    poll_until("the key form to come back", WAIT, || async move {
        let stored = script(
            client,
            &format!("return sessionStorage.getItem('{STORAGE_KEY}');"),
        )
        .await;
        let form_hidden = script(
            client,
            "return document.getElementById('key-section').hidden;",
        )
        .await;
        if stored.is_null() && form_hidden == Value::Bool(false) {
            Ok(())
        } else {
            Err(format!("stored {stored}, form hidden {form_hidden}"))
        }
    })
    .await;

    // A wrong key is refused with a message, and not kept.
    let input = client
        .find(Locator::Css("#api-key"))
        .await
        .expect("key input");
    input.send_keys("not-a-key").await.expect("type");
    client
        .find(Locator::Css("#key-submit"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    let status = poll_until("the refusal", WAIT, || async move {
        let status = text_of(client, "#status").await?;
        if status.contains("not accepted") {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert!(status.contains("no organisation"), "{status}");
    assert!(
        script(
            client,
            &format!("return sessionStorage.getItem('{STORAGE_KEY}');")
        )
        .await
        .is_null()
    );

    browser.close().await;
}

#[tokio::test]
async fn a_key_given_while_another_loads_is_the_one_shown_and_kept() {
    let Some(browser) = launch().await else {
        return;
    };
    let h = Harness::start().await;
    busy_day(&h);
    let client = browser.client();
    open_usage_page(client, &h.base).await;
    // acme's answers are held back until the test lets them go, as on a slow network.
    script(
        client,
        "const real = window.fetch; window.releaseAcme = null;
         const held = new Promise(resolve => { window.releaseAcme = resolve; });
         window.fetch = (url, options) => {
           const key = options.headers.Authorization;
           return key.endsWith('acme-key-1') ? held.then(() => real(url, options)) : real(url, options);
         };
         return true;",
    )
    .await;
    submit_key(client, KEY).await;
    submit_key(client, "globex-key-1").await;
    // globex is shown once acme's answers, which came later, are ignored.
    script(client, "window.releaseAcme(); return true;").await;
    poll_until("globex to be shown", WAIT, || async move {
        let org = text_of(client, "#org-name").await?;
        let status = text_of(client, "#status").await.unwrap_or_default();
        if org == "globex" && status.starts_with("Updated") {
            Ok(())
        } else {
            Err(format!("{org:?} ({status:?})"))
        }
    })
    .await;
    assert_eq!(
        script(
            client,
            &format!("return sessionStorage.getItem('{STORAGE_KEY}');")
        )
        .await,
        "globex-key-1"
    );
    // Had acme's late answers been drawn, they would show acme's calls today; globex has none.
    wait_for_calls_today(client, 0).await;
    assert_eq!(text_of(client, "#org-name").await.as_deref(), Ok("globex"));
}

#[tokio::test]
async fn a_rate_shows_as_a_bucket() {
    let Some(browser) = launch().await else {
        return;
    };
    let h = Harness::start().await;
    // Four calls at once take four of the bucket's ten; it is full again two seconds later.
    for _ in 0..4 {
        h.admit(&Call::get("globex-key-1", "/v1/items"));
    }
    let client = browser.client();
    open_usage_page(client, &h.base).await;
    submit_key(client, "globex-key-1").await;
    let available = poll_until("the bucket", WAIT, || async move {
        text_of(client, "[data-limit=smooth] .rate-available").await
    })
    .await;
    assert_eq!(available, "6 requests there now");
    let kind = text_of(client, "[data-limit=smooth] .limit-dim")
        .await
        .expect("the rate's line");
    assert!(kind.contains("2 per second, bursts of 10"), "{kind}");
    let full = text_of(client, "[data-limit=smooth] .rate-full")
        .await
        .expect("when it is full");
    // 05:00:02 in New York, the org's zone.
    assert!(full.starts_with("full") && full.contains("05:00"), "{full}");
    assert!(
        client
            .find(Locator::Css("[data-limit=smooth] .limit-reset"))
            .await
            .is_err(),
        "a rate has no window to reset"
    );
}
