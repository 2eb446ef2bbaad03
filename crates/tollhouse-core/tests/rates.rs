//! Smooth rates in the policy: sandbox and overrides scale them, a reload that changes a rate
//! starts it fresh while the other limits keep their counts, and the ledger decides exactly.

use std::sync::Arc;

use tollhouse_core::{Charge, Ledger, Policy, ResolvedOrg, Timestamp, Verdict};

const PLAN: &str = r#"
[server]
sandbox_divisor = 2

[[plans.p.limits]]
name = "smooth"
dimension = "requests"
rate = { amount = 10, per = "second", burst = 20 }

[[plans.p.limits]]
name = "daily"
dimension = "requests"
tiers = [{ window = "day", capacity = 100 }]
"#;

fn org(extra: &str, id: &str) -> Arc<ResolvedOrg> {
    let text = format!("{PLAN}\n{extra}");
    let policy = Policy::from_toml_str(&text, "rates.toml".as_ref()).expect("a valid policy");
    Arc::clone(policy.org(id).expect("defined"))
}

const NOW: Timestamp = Timestamp::from_secs(1_796_000_000);

fn rate_of(org: &ResolvedOrg) -> (u64, u64) {
    let rate = org.limits()[0].rate(NOW).expect("a rate");
    (rate.amount(), rate.burst())
}

#[test]
fn sandbox_and_overrides_scale_a_rate() {
    let plain = org("[[orgs]]\nid = \"a\"\nplan = \"p\"\n", "a");
    assert_eq!(rate_of(&plain), (10, 20));
    let sandbox = org(
        "[[orgs]]\nid = \"s\"\nplan = \"p\"\nenvironment = \"sandbox\"\n",
        "s",
    );
    assert_eq!(rate_of(&sandbox), (5, 10));
    let burst = org(
        "[[orgs]]\nid = \"b\"\nplan = \"p\"\noverrides = [{ limit = \"smooth\", capacity = 50 }]\n",
        "b",
    );
    assert_eq!(rate_of(&burst), (10, 50));
    let scaled = org(
        "[[orgs]]\nid = \"x\"\nplan = \"p\"\noverrides = [{ limit = \"smooth\", scale = 3.0 }]\n",
        "x",
    );
    assert_eq!(rate_of(&scaled), (30, 60));
    // Until an instant: the plan's rate is back after it.
    let until = org(
        "[[orgs]]\nid = \"u\"\nplan = \"p\"\noverrides = [{ limit = \"smooth\", scale = 2.0, until = \"2026-12-31T00:00:00Z\" }]\n",
        "u",
    );
    let later = Timestamp::from_secs(1_800_000_000);
    assert_eq!(rate_of(&until), (20, 40));
    let rate = until.limits()[0].rate(later).expect("a rate");
    assert_eq!((rate.amount(), rate.burst()), (10, 20));
    let text = format!(
        "{PLAN}\n[[orgs]]\nid = \"c\"\nplan = \"p\"\noverrides = [{{ limit = \"smooth\", capacities = [1, 2] }}]\n"
    );
    let error = Policy::from_toml_str(&text, "rates.toml".as_ref()).expect_err("no tiers");
    assert!(error.to_string().contains("is a rate"), "{error}");
}

/// Loads `text`; the error it is refused with, as start-up prints it.
fn refused(text: &str) -> String {
    Policy::from_toml_str(text, "rates.toml".as_ref())
        .expect_err("refused")
        .to_string()
}

#[test]
fn a_sandbox_or_an_override_that_makes_a_rate_unbounded_is_refused_at_load() {
    // 3 a year with a burst of 100 fills in 33 years; halved for a sandbox (1 a year, burst 50) it
    // would take 50, past the 35 years whose debt tollhouse counts exactly.
    let slow = "[server]\nsandbox_divisor = 2\n[[plans.p.limits]]\nname = \"slow\"\n\
                dimension = \"requests\"\nrate = { amount = 3, per = \"year\", burst = 100 }\n";
    let production = format!("{slow}[[orgs]]\nid = \"a\"\nplan = \"p\"\n");
    assert!(Policy::from_toml_str(&production, "rates.toml".as_ref()).is_ok());
    let sandbox = format!("{production}environment = \"sandbox\"\n");
    let error = refused(&sandbox);
    assert!(error.contains("environment"), "{error}");
    assert!(error.contains("a burst of 50 at 1 per year"), "{error}");
    // A capacity override of a monthly rate: 1,000 units at one a month.
    let monthly = "[[plans.p.limits]]\nname = \"monthly\"\ndimension = \"requests\"\n\
                   rate = { amount = 1, per = \"month\" }\n[[orgs]]\nid = \"b\"\nplan = \"p\"\n\
                   overrides = [{ limit = \"monthly\", capacity = 1000 }]\n";
    let error = refused(monthly);
    assert!(error.contains("overrides[0]"), "{error}");
    assert!(error.contains("35 years"), "{error}");
}

fn admit(ledger: &mut Ledger, org: &ResolvedOrg, at: Timestamp) -> bool {
    matches!(
        ledger.admit(org, Charge::default(), at),
        Verdict::Admitted { .. }
    )
}

#[test]
fn a_reload_that_changes_a_rate_starts_it_fresh_and_keeps_the_rest() {
    let before = org("[[orgs]]\nid = \"a\"\nplan = \"p\"\n", "a");
    let mut ledger = Ledger::new(&before);
    for _ in 0..20 {
        assert!(admit(&mut ledger, &before, NOW));
    }
    assert!(!admit(&mut ledger, &before, NOW));
    // The same rate under a policy loaded again (another limit added): still empty.
    let text = format!(
        "{PLAN}\n[[plans.p.limits]]\nname = \"hourly\"\ndimension = \"requests\"\ntiers = [{{ window = \"hour\", capacity = 1000 }}]\n[[orgs]]\nid = \"a\"\nplan = \"p\"\n"
    );
    let same = Policy::from_toml_str(&text, "rates.toml".as_ref()).expect("valid");
    let same = same.org("a").expect("defined");
    assert!(!admit(&mut ledger, same, NOW));
    // A changed rate starts fresh; the daily count (20 admitted) is kept.
    let changed = PLAN.replace("burst = 20", "burst = 30");
    let text = format!("{changed}\n[[orgs]]\nid = \"a\"\nplan = \"p\"\n");
    let policy = Policy::from_toml_str(&text, "rates.toml".as_ref()).expect("valid");
    let changed = policy.org("a").expect("defined");
    let statuses = ledger.peek(changed, NOW);
    assert_eq!(statuses[0].remaining, 30);
    assert_eq!(statuses[1].remaining, 80);
}
