//! Loading a [`Policy`] from a TOML policy file.
//!
//! [`Policy::from_toml_file`] reads a file and [`Policy::from_toml_str`] reads text already in
//! memory. The file has the sections `[server]`, `[plans.NAME]` with `[[plans.NAME.limits]]`,
//! `[[orgs]]`, `[[routes]]` and `[admin]`; all but the plans are optional (a file without plans,
//! such as an empty one, would refuse every caller, so it is refused itself), and plans keep the
//! order the file declares them in. Every value goes through the same validating constructors as a policy built in code
//! ([`Tier::new`], [`Limit::new`], [`Plan::new`], [`RouteRule::parse`], ...), and the whole is then
//! checked together: every org on a defined plan, org ids unique, every key belonging to one org,
//! every override naming a limit of the org's plan.
//!
//! A file that is wrong in any way fails with one [`PolicyError::File`] whose `line` and `column`
//! (1-based) point at the offending value, and whose message names the place in policy terms, what
//! is wrong, and what to change:
//!
//! ```text
//! policy.toml:22:39: plans.build.limits[1].tiers[0].capacity: a capacity of 0 admits nothing; set a capacity of at least 1, or remove the tier
//! ```
//!
//! Unknown keys, values of the wrong type and TOML syntax errors are reported the same way.
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//! use tollhouse_core::{Environment, PolicyError, Policy, Timestamp, Treatment};
//!
//! let text = r#"
//! [plans.build]
//! concurrency = 3
//!
//! [[plans.build.limits]]
//! name = "daily"
//! dimension = "requests"
//! tiers = [{ window = "day", capacity = 2500 }]
//!
//! [[orgs]]
//! id = "acme"
//! plan = "build"
//! environment = "sandbox"
//! keys = ["acme-key-1"]
//!
//! [[routes]]
//! match = "GET /v1/reports"
//! cost = 10
//! "#;
//! let policy = Policy::from_toml_str(text, Path::new("policy.toml"))?;
//! let acme = policy.org_by_key("acme-key-1").expect("acme's key");
//! assert_eq!(acme.environment(), Environment::Sandbox);
//! // Sandbox orgs get half the capacity by default.
//! assert_eq!(acme.limits()[0].capacity(0, Timestamp::from_secs(0)), 1250);
//! assert_eq!(
//!     policy.treatment("GET", "/v1/reports").map(|(_, t)| t),
//!     Some(Treatment::Cost(10))
//! );
//!
//! // A mistake names the file, the line and column, the place and the fix.
//! let wrong = text.replace("capacity = 2500", "capacity = 0");
//! let error = Policy::from_toml_str(&wrong, Path::new("policy.toml")).expect_err("capacity 0");
//! assert!(matches!(error, PolicyError::File { line: 8, .. }));
//! assert!(error.to_string().starts_with(
//!     "policy.toml:8:39: plans.build.limits[0].tiers[0].capacity: a capacity of 0 admits nothing"
//! ));
//! # Ok::<(), PolicyError>(())
//! ```

use std::collections::HashMap;
use std::fmt::Display;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use crate::error::PolicyError;
use crate::org::{Adjustment, Environment, Org, Override};
use crate::plan::{Concurrency, Dimension, Limit, LimitZone, Plan, Tier, parse_zone};
use crate::policy::{OnStoreError, Policy, ResetFormat, ServerSettings, UsageQuery};
use crate::rate::Rate;
use crate::route::{RouteRule, Treatment};
use crate::time::Timestamp;
use crate::usage::MAX_CALLS_KEPT;
use crate::window::Window;

mod place;
mod raw;

use place::{Places, collect_nodes, deepest_at, describe, index_in, plan_place, syntax_place};
use raw::{RawFile, RawLimit, RawOrg, RawOverride, RawPlan, RawRate, RawRoute, RawServer};

impl Policy {
    /// Reads and validates the policy file at `path` (format: [the module docs](crate::file)).
    ///
    /// Every mistake comes back as [`PolicyError::File`] with the line and column of the offending
    /// value; a file that cannot be read at all gives line 0 and says why.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::File {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message: format!(
                "the policy file could not be read: {error}; check that the path is right and the file is readable UTF-8 text"
            ),
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates policy-file text; `origin` is the path errors name (it is not read).
    ///
    /// See [the module docs](crate::file) for the format and an example.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
        let source = Source { path: origin, text };
        let raw: RawFile = toml::from_str(text).map_err(|error| source.toml_error(&error))?;
        source.policy(raw)
    }
}

type Span = Range<usize>;

/// The text being loaded and the path its errors name.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..]
            .chars()
            .filter(|c| *c != '\u{feff}')
            .count()
            + 1;
        (line, column)
    }

    /// An error at `span` with a finished message.
    fn at(&self, span: &Span, message: String) -> PolicyError {
        let (line, column) = self.position(span.start);
        PolicyError::File {
            path: self.path.to_owned(),
            line,
            column,
            message,
        }
    }

    /// A mistake at `span`: `place: problem; fix`.
    fn mistake(
        &self,
        span: &Span,
        place: &str,
        problem: impl Display,
        fix: impl Display,
    ) -> PolicyError {
        self.at(span, format!("{place}: {problem}; {fix}"))
    }

    /// A model constructor's error, its place put under `prefix`, located at `span`.
    fn model(&self, span: &Span, prefix: &str, error: PolicyError) -> PolicyError {
        let error = if prefix.is_empty() {
            error
        } else {
            error.within(prefix)
        };
        match error {
            PolicyError::Invalid { .. } => self.at(span, error.to_string()),
            other => other,
        }
    }

    /// A model constructor's error, keeping what it says but naming `place` instead of its own.
    fn renamed(&self, span: &Span, place: &str, error: PolicyError) -> PolicyError {
        match error {
            PolicyError::Invalid { problem, fix, .. } => self.mistake(span, place, problem, fix),
            other => other,
        }
    }

    /// A whole number that must fit `T`; `fix` says what range to use.
    fn whole<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        place: &str,
        fix: &str,
    ) -> Result<T, PolicyError> {
        let number = *value.get_ref();
        T::try_from(number).map_err(|_| {
            let problem = if number < 0 {
                format!("{number} is negative")
            } else {
                format!("{number} is too large")
            };
            self.mistake(&value.span(), place, problem, fix)
        })
    }

    /// A TOML syntax or shape error, with the place it happened in.
    fn toml_error(&self, error: &toml::de::Error) -> PolicyError {
        let span = error.span().unwrap_or(0..0);
        let (tree, syntax) = DeTable::parse_recoverable(self.text);
        let mut nodes = Vec::new();
        collect_nodes(tree.get_ref(), &mut String::new(), &mut nodes);
        let message = error.message().trim();
        if !syntax.is_empty() {
            let place = syntax_place(&nodes, self.text, span.start)
                .unwrap_or_else(|| "the top of the file".to_owned());
            let message = format!(
                "{place}: this is not valid TOML ({message}); correct the syntax at this line and column"
            );
            return self.at(&span, message);
        }
        let place = deepest_at(&nodes, span.start)
            .map_or_else(|| "the policy file".to_owned(), |node| node.place.clone());
        let (problem, fix) = describe(message);
        self.mistake(&span, &place, problem, fix)
    }

    /// Turns the raw file into a validated policy.
    fn policy(&self, raw: RawFile) -> Result<Policy, PolicyError> {
        let mut places = Places::default();
        let server = self.server(raw.server.as_ref(), &mut places)?;

        let mut named: Vec<(&Spanned<String>, &RawPlan)> = raw.plans.iter().collect();
        // The file's order, not the map's: every key keeps the span of its first appearance.
        named.sort_by_key(|(name, _)| name.span().start);
        let mut plans = Vec::with_capacity(named.len());
        for (name, plan) in named {
            places.note(plan_place(name.get_ref()), name.span());
            plans.push(self.plan(name, plan)?);
        }

        let mut orgs = Vec::with_capacity(raw.orgs.len());
        let mut key_owners: HashMap<&str, usize> = HashMap::new();
        for (index, org) in raw.orgs.iter().enumerate() {
            orgs.push(self.org(index, org, &raw.orgs, &plans, &mut key_owners, &mut places)?);
        }

        let mut routes: Vec<RouteRule> = Vec::with_capacity(raw.routes.len());
        for (index, route) in raw.routes.iter().enumerate() {
            let rule = self.route(index, route)?;
            if let Some(first) = routes.iter().position(|earlier| earlier.covers(&rule)) {
                return Err(self.mistake(
                    &route.pattern.span(),
                    &format!("routes[{index}].match"),
                    format!(
                        "{:?} never applies: routes[{first}] ({:?}) matches the same requests first",
                        route.pattern.get_ref(),
                        raw.routes[first].pattern.get_ref()
                    ),
                    "remove one of them, or put the narrower rule first: a path before a pattern that covers it, \
                     one method before `*`, HEAD before GET",
                ));
            }
            routes.push(rule);
        }

        let mut builder = Policy::builder().server(server);
        for plan in plans {
            builder = builder.plan(plan);
        }
        for org in orgs {
            builder = builder.org(org);
        }
        for route in routes {
            builder = builder.route(route);
        }
        if let Some(admin) = &raw.admin {
            if admin.token.get_ref().trim().is_empty() {
                return Err(self.mistake(
                    &admin.token.span(),
                    "admin.token",
                    "the admin token is empty",
                    "set a long random token, or remove [admin] to turn the admin API off",
                ));
            }
            builder = builder.admin_token(admin.token.get_ref());
        }
        if raw.plans.is_empty() {
            // An empty file (or one half written when it was reloaded) would refuse every caller.
            return Err(self.mistake(
                &(0..0),
                "the policy file",
                "it defines no plans, so no org can be served and every request would be refused",
                "define at least one plan ([plans.NAME] with its [[plans.NAME.limits]]) and the \
                 [[orgs]] on it",
            ));
        }
        // Everything `build` checks has been checked above with spans; should the model learn a new
        // check, its error still lands on the closest place the file names.
        builder.build().map_err(|error| {
            let span = error
                .place()
                .and_then(|place| places.find(place))
                .unwrap_or(0..0);
            self.model(&span, "", error)
        })
    }

    fn server(
        &self,
        raw: Option<&RawServer>,
        places: &mut Places,
    ) -> Result<ServerSettings, PolicyError> {
        let mut settings = ServerSettings::default();
        let Some(raw) = raw else {
            return Ok(settings);
        };
        if let Some(zone) = &raw.time_zone {
            settings.time_zone = parse_zone(zone.get_ref())
                .map_err(|error| self.renamed(&zone.span(), "server.time_zone", error))?;
        }
        if let Some(divisor) = &raw.sandbox_divisor {
            let place = "server.sandbox_divisor";
            let fix = "set sandbox_divisor to a number from 1 (sandboxes get full capacity) to 4294967295";
            let value: u32 = self.whole(divisor, place, fix)?;
            if value == 0 {
                return Err(self.mistake(
                    &divisor.span(),
                    place,
                    "a divisor of 0 is undefined",
                    fix,
                ));
            }
            places.note(place.to_owned(), divisor.span());
            settings.sandbox_divisor = value;
        }
        if let Some(format) = &raw.reset_format {
            settings.reset_format = match format.get_ref().as_str() {
                "epoch" => ResetFormat::Epoch,
                "http-date" => ResetFormat::HttpDate,
                "delta" => ResetFormat::Delta,
                other => {
                    return Err(self.mistake(
                        &format.span(),
                        "server.reset_format",
                        format!("unknown reset format {other:?}"),
                        "use \"epoch\", \"http-date\" or \"delta\"",
                    ));
                }
            };
        }
        if let Some(legacy) = raw.legacy_headers {
            settings.legacy_headers = legacy;
        }
        if let Some(ietf) = raw.ietf_headers {
            settings.ietf_headers = ietf;
        }
        if let Some(choice) = &raw.on_store_error {
            settings.on_store_error = self.on_error(choice, "server.on_store_error")?;
        }
        if let Some(choice) = &raw.on_lookup_error {
            settings.on_lookup_error = self.on_error(choice, "server.on_lookup_error")?;
        }
        if let Some(label) = raw.metrics_org_label {
            settings.metrics_org_label = label;
        }
        settings.usage_query = self.usage_query(raw)?;
        if let Some(max) = &raw.max_latency_ms {
            let place = "server.max_latency_ms";
            let fix = "set max_latency_ms from 1000 (a second) to 86400000 (a day): at least your longest request";
            let value: u64 = self.whole(max, place, fix)?;
            if !(1_000..=86_400_000).contains(&value) {
                return Err(self.mistake(
                    &max.span(),
                    place,
                    format!(
                        "a request counted for at most {value} ms is outside what tollhouse allows"
                    ),
                    fix,
                ));
            }
            places.note(place.to_owned(), max.span());
            settings.max_latency_ms = value;
        }
        if let Some(kept) = &raw.calls_kept {
            let place = "server.calls_kept";
            let fix = "keep at least 1 call";
            let value: usize = self.whole(kept, place, fix)?;
            if value == 0 {
                return Err(self.mistake(
                    &kept.span(),
                    place,
                    "a call log of 0 keeps nothing",
                    fix,
                ));
            }
            if value > MAX_CALLS_KEPT {
                return Err(self.mistake(
                    &kept.span(),
                    place,
                    format!("a call log of {value} calls per org is more than tollhouse keeps"),
                    "keep at most 1000 calls per org",
                ));
            }
            places.note(place.to_owned(), kept.span());
            settings.calls_kept = value;
        }
        Ok(settings)
    }

    /// `usage_query` (`"keep"` or `"drop"`) and `redact_query` (parameter names).
    fn usage_query(&self, raw: &RawServer) -> Result<UsageQuery, PolicyError> {
        let keep = match &raw.usage_query {
            None => true,
            Some(choice) => match choice.get_ref().as_str() {
                "keep" => true,
                "drop" => false,
                other => {
                    return Err(self.mistake(
                        &choice.span(),
                        "server.usage_query",
                        format!("unknown choice {other:?}"),
                        "use \"keep\" (the whole query) or \"drop\" (the path alone)",
                    ));
                }
            },
        };
        let names = raw.redact_query.as_deref().unwrap_or_default();
        for (index, name) in names.iter().enumerate() {
            let bad = name.get_ref().is_empty()
                || name.get_ref().contains(['&', '=', '?', '#'])
                || name.get_ref().len() > 64;
            if bad {
                return Err(self.mistake(
                    &name.span(),
                    &format!("server.redact_query[{index}]"),
                    format!("{:?} is not a query parameter name", name.get_ref()),
                    "name parameters as they appear before '=', such as \"token\"",
                ));
            }
        }
        Ok(match (keep, names.is_empty()) {
            (false, _) => UsageQuery::Drop,
            (true, true) => UsageQuery::Keep,
            (true, false) => UsageQuery::Redact(
                names
                    .iter()
                    .map(|name| Box::from(name.get_ref().as_str()))
                    .collect(),
            ),
        })
    }

    /// `"allow"` or `"deny"`: what to do when the store or a key lookup fails.
    fn on_error(&self, choice: &Spanned<String>, place: &str) -> Result<OnStoreError, PolicyError> {
        match choice.get_ref().as_str() {
            "allow" => Ok(OnStoreError::Allow),
            "deny" => Ok(OnStoreError::Deny),
            other => Err(self.mistake(
                &choice.span(),
                place,
                format!("unknown choice {other:?}"),
                "use \"allow\" (let requests through) or \"deny\" (answer 503)",
            )),
        }
    }

    fn plan(&self, name: &Spanned<String>, raw: &RawPlan) -> Result<Plan, PolicyError> {
        let prefix = plan_place(name.get_ref());
        let mut limits = Vec::with_capacity(raw.limits.len());
        for (index, limit) in raw.limits.iter().enumerate() {
            limits.push(self.limit(&format!("{prefix}.limits[{index}]"), limit)?);
        }
        let mut plan = Plan::new(name.get_ref().as_str(), limits).map_err(|error| {
            let span = error
                .place()
                .and_then(|place| index_in(place, "limits"))
                .and_then(|index| raw.limits.get(index))
                .map_or_else(|| name.span(), |limit| limit.name.span());
            self.model(&span, &prefix, error)
        })?;
        match (&raw.concurrency, &raw.concurrency_wait_ms) {
            (Some(max), wait) => {
                let max_value: u32 = self.whole(
                    max,
                    &format!("{prefix}.concurrency"),
                    "set concurrency to a number from 1 to 4294967295, or remove it to allow any \
                     number in flight",
                )?;
                let wait = match wait {
                    Some(wait) => Duration::from_millis(self.whole(
                        wait,
                        &format!("{prefix}.concurrency_wait_ms"),
                        "set concurrency_wait_ms to 0 (reject at once) or more",
                    )?),
                    None => Duration::ZERO,
                };
                let concurrency = Concurrency::new(max_value, wait)
                    .map_err(|error| self.model(&max.span(), &prefix, error))?;
                plan = plan.with_concurrency(concurrency);
            }
            (None, Some(wait)) => {
                return Err(self.mistake(
                    &wait.span(),
                    &format!("{prefix}.concurrency_wait_ms"),
                    "a wait for a concurrency slot needs a concurrency limit",
                    "set concurrency too, or remove concurrency_wait_ms",
                ));
            }
            (None, None) => {}
        }
        Ok(plan.with_shadow(raw.shadow.unwrap_or(false)))
    }

    fn limit(&self, prefix: &str, raw: &RawLimit) -> Result<Limit, PolicyError> {
        let dimension = Dimension::from_str(raw.dimension.get_ref())
            .map_err(|error| self.model(&raw.dimension.span(), prefix, error))?;
        let zone = match &raw.zone {
            Some(zone) => LimitZone::from_str(zone.get_ref())
                .map_err(|error| self.model(&zone.span(), prefix, error))?,
            None => LimitZone::Org,
        };
        let name = raw.name.get_ref().as_str();
        let tiers = match (&raw.tiers, &raw.rate) {
            (Some(_), Some(rate)) => {
                return Err(self.mistake(
                    &rate.span(),
                    &format!("{prefix}.rate"),
                    format!("limit {name:?} has both tiers and a rate"),
                    "keep one: tiers for calendar quotas, or a rate for a smooth rate with a \
                     burst (two limits can hold both)",
                ));
            }
            (None, Some(rate)) => {
                if let Some(zone) = &raw.zone {
                    return Err(self.mistake(
                        &zone.span(),
                        &format!("{prefix}.zone"),
                        format!("limit {name:?} is a rate, which follows no clock"),
                        "remove zone (it places calendar windows only)",
                    ));
                }
                let rate = self.rate(&format!("{prefix}.rate"), rate)?;
                return Limit::with_rate(name, dimension, rate)
                    .map_err(|error| self.model(&raw.name.span(), prefix, error));
            }
            (None, None) => {
                return Err(self.mistake(
                    &raw.name.span(),
                    prefix,
                    format!("limit {name:?} has neither tiers nor a rate"),
                    "give tiers, such as tiers = [{ window = \"day\", capacity = 2500 }], or a \
                     rate, such as rate = { amount = 10, per = \"second\", burst = 20 }",
                ));
            }
            (Some(tiers), None) => tiers,
        };
        let mut resolved = Vec::with_capacity(tiers.get_ref().len());
        for (index, tier) in tiers.get_ref().iter().enumerate() {
            let place = format!("{prefix}.tiers[{index}]");
            let window = self.window(&tier.window, &format!("{place}.window"))?;
            let capacity = self.whole(
                &tier.capacity,
                &format!("{place}.capacity"),
                "set a capacity of at least 1, or remove the tier",
            )?;
            resolved.push(
                Tier::new(window, capacity)
                    .map_err(|error| self.model(&tier.capacity.span(), &place, error))?,
            );
        }
        Limit::new(name, dimension, zone, resolved).map_err(|error| {
            let span = match error.place() {
                Some("name") => raw.name.span(),
                Some(place) => index_in(place, "tiers")
                    .and_then(|index| tiers.get_ref().get(index))
                    .map_or_else(|| tiers.span(), |tier| tier.window.span()),
                None => tiers.span(),
            };
            self.model(&span, prefix, error)
        })
    }

    /// A window named in the file, or an error that lists the allowed ones.
    fn window(&self, text: &Spanned<String>, place: &str) -> Result<Window, PolicyError> {
        Window::from_str(text.get_ref()).map_err(|error| {
            self.mistake(
                &text.span(),
                place,
                format!("window {:?} is not allowed", error.text),
                error.allowed(),
            )
        })
    }

    /// `rate = { amount, per, burst }`.
    fn rate(&self, place: &str, raw: &Spanned<RawRate>) -> Result<Rate, PolicyError> {
        let rate = raw.get_ref();
        let per = self.window(&rate.per, &format!("{place}.per"))?;
        let amount = self.whole(
            &rate.amount,
            &format!("{place}.amount"),
            "set amount to the units given back per `per`, at least 1",
        )?;
        let burst = match &rate.burst {
            Some(burst) => Some(self.whole(
                burst,
                &format!("{place}.burst"),
                "set burst to the most units the bucket holds, at least 1",
            )?),
            None => None,
        };
        Rate::new(amount, per, burst).map_err(|error| {
            let span = match error.place() {
                Some("amount") => rate.amount.span(),
                Some("burst") => rate
                    .burst
                    .as_ref()
                    .map_or_else(|| raw.span(), Spanned::span),
                _ => raw.span(),
            };
            self.model(&span, place, error)
        })
    }

    fn org<'r>(
        &self,
        index: usize,
        raw: &'r RawOrg,
        all: &[RawOrg],
        plans: &[Plan],
        key_owners: &mut HashMap<&'r str, usize>,
        places: &mut Places,
    ) -> Result<Org, PolicyError> {
        let place = format!("orgs[{index}]");
        let id = raw.id.get_ref();
        places.note(place.clone(), raw.id.span());
        if id.is_empty() {
            return Err(self.mistake(
                &raw.id.span(),
                &format!("{place}.id"),
                "the org id is empty",
                "give the org an id, such as id = \"acme\"",
            ));
        }
        if let Some(first) = all[..index]
            .iter()
            .position(|earlier| earlier.id.get_ref() == id)
        {
            return Err(self.mistake(
                &raw.id.span(),
                &format!("{place}.id"),
                format!("org {id:?} is defined twice (first as orgs[{first}])"),
                "give every org its own id",
            ));
        }
        let plan_name = raw.plan.get_ref();
        places.note(format!("{place}.plan"), raw.plan.span());
        let Some(plan) = plans.iter().find(|plan| plan.name() == plan_name) else {
            let known: Vec<&str> = plans.iter().map(|plan| plan.name()).collect();
            let fix = if known.is_empty() {
                format!("define [plans.{plan_name}] with its limits")
            } else {
                format!(
                    "use one of the defined plans ({}) or define [plans.{plan_name}]",
                    known.join(", ")
                )
            };
            return Err(self.mistake(
                &raw.plan.span(),
                &format!("{place}.plan"),
                format!("org {id:?} is on plan {plan_name:?}, which is not defined"),
                fix,
            ));
        };
        let mut org = Org::new(id.as_str(), plan_name.as_str());
        if let Some(zone) = &raw.time_zone {
            let zone = parse_zone(zone.get_ref()).map_err(|error| {
                self.renamed(&zone.span(), &format!("{place}.time_zone"), error)
            })?;
            org = org.with_time_zone(zone);
        }
        if let Some(environment) = &raw.environment {
            let environment = Environment::from_str(environment.get_ref())
                .map_err(|error| self.model(&environment.span(), &place, error))?;
            org = org.with_environment(environment);
        }
        for (key_index, key) in raw.keys.iter().enumerate() {
            let key_place = format!("{place}.keys[{key_index}]");
            places.note(key_place.clone(), key.span());
            if let Err((problem, fix)) = crate::org::check_key(key.get_ref()) {
                return Err(self.mistake(&key.span(), &key_place, problem, fix));
            }
            if let Some(&owner) = key_owners.get(key.get_ref().as_str()) {
                let (problem, fix) = if owner == index {
                    (
                        format!("this key is listed twice for org {id:?}"),
                        "list each key once",
                    )
                } else {
                    (
                        format!(
                            "this key already belongs to org {:?} (orgs[{owner}])",
                            all[owner].id.get_ref()
                        ),
                        "give every org keys of its own",
                    )
                };
                return Err(self.mistake(&key.span(), &key_place, problem, fix));
            }
            key_owners.insert(key.get_ref(), index);
            org = org.with_key(key.get_ref());
        }
        for (override_index, adjustment) in raw.overrides.iter().enumerate() {
            let override_place = format!("{place}.overrides[{override_index}]");
            let earlier = &raw.overrides[..override_index];
            org = org.with_override(self.adjustment(&override_place, adjustment, plan, earlier)?);
            places.note(override_place, adjustment.get_ref().limit.span());
        }
        Ok(org)
    }

    fn adjustment(
        &self,
        place: &str,
        spanned: &Spanned<RawOverride>,
        plan: &Plan,
        earlier: &[Spanned<RawOverride>],
    ) -> Result<Override, PolicyError> {
        let raw = spanned.get_ref();
        let name = raw.limit.get_ref();
        let Some(limit) = plan.limit(name) else {
            let known: Vec<&str> = plan.limits().iter().map(|limit| limit.name()).collect();
            let fix = if known.is_empty() {
                format!("remove the override: plan {:?} has no limits", plan.name())
            } else {
                format!("name one of its limits: {}", known.join(", "))
            };
            return Err(self.mistake(
                &raw.limit.span(),
                &format!("{place}.limit"),
                format!("plan {:?} has no limit {name:?}", plan.name()),
                fix,
            ));
        };
        if earlier
            .iter()
            .any(|other| other.get_ref().limit.get_ref() == name)
        {
            return Err(self.mistake(
                &raw.limit.span(),
                &format!("{place}.limit"),
                format!("limit {name:?} is overridden twice"),
                "keep one override per limit",
            ));
        }
        let mut given: Vec<(&str, Span)> = Vec::with_capacity(3);
        if let Some(capacity) = &raw.capacity {
            given.push(("capacity", capacity.span()));
        }
        if let Some(capacities) = &raw.capacities {
            given.push(("capacities", capacities.span()));
        }
        if let Some(scale) = &raw.scale {
            given.push(("scale", scale.span()));
        }
        given.sort_by_key(|(_, span)| span.start);
        let (kind, span) = match given.as_slice() {
            [] => {
                return Err(self.mistake(
                    &spanned.span(),
                    place,
                    format!("the override of {name:?} changes nothing"),
                    "give one of capacity = N, capacities = [N, ...] or scale = X",
                ));
            }
            [one] => one.clone(),
            [(first, _), (second, span), ..] => {
                return Err(self.mistake(
                    span,
                    &format!("{place}.{second}"),
                    format!("{first} and {second} cannot be combined in one override"),
                    "keep only one of capacity, capacities and scale",
                ));
            }
        };
        let fix = "set a capacity of at least 1";
        let adjustment = match (kind, &raw.capacity, &raw.capacities, &raw.scale) {
            ("capacity", Some(capacity), _, _) => {
                Adjustment::Capacity(self.whole(capacity, &format!("{place}.capacity"), fix)?)
            }
            ("capacities", _, Some(capacities), _) => {
                let mut values = Vec::with_capacity(capacities.get_ref().len());
                for (index, value) in capacities.get_ref().iter().enumerate() {
                    let value_place = format!("{place}.capacities[{index}]");
                    let capacity: u64 = self.whole(value, &value_place, fix)?;
                    if capacity == 0 {
                        return Err(self.mistake(
                            &value.span(),
                            &value_place,
                            "a capacity of 0 admits nothing",
                            fix,
                        ));
                    }
                    values.push(capacity);
                }
                Adjustment::Capacities(values)
            }
            (_, _, _, Some(scale)) => Adjustment::Scale(*scale.get_ref()),
            _ => {
                return Err(self.mistake(
                    &span,
                    place,
                    "the override could not be read",
                    "give one of capacity = N, capacities = [N, ...] or scale = X",
                ));
            }
        };
        let mut adjustment = Override::new(name.as_str(), adjustment);
        match limit.rate() {
            Some(rate) => adjustment
                .apply_to_rate(rate.amount(), rate.burst())
                .map(drop),
            None => {
                let base: Vec<u64> = limit.tiers().iter().map(|tier| tier.capacity()).collect();
                adjustment.apply(&base).map(drop)
            }
        }
        .map_err(|error| self.model(&span, place, error))?;
        if let Some(until) = &raw.until {
            adjustment = adjustment.until(self.instant(until, &format!("{place}.until"))?);
        }
        Ok(adjustment)
    }

    /// An RFC 3339 string or a TOML offset date-time.
    fn instant(&self, value: &Spanned<toml::Value>, place: &str) -> Result<Timestamp, PolicyError> {
        let fix = "write a date-time with a UTC offset, such as until = \"2026-12-31T00:00:00Z\"";
        let text = match value.get_ref() {
            toml::Value::String(text) => text.clone(),
            toml::Value::Datetime(at) if at.date.is_some() && at.time.is_some() => {
                if at.offset.is_none() {
                    return Err(self.mistake(
                        &value.span(),
                        place,
                        format!("{at} has no UTC offset, so the instant is ambiguous"),
                        fix,
                    ));
                }
                at.to_string()
            }
            toml::Value::Datetime(at) => {
                return Err(self.mistake(
                    &value.span(),
                    place,
                    format!("{at} is not a full date and time"),
                    fix,
                ));
            }
            other => {
                return Err(self.mistake(
                    &value.span(),
                    place,
                    format!("found {} where a date-time belongs", other.type_str()),
                    fix,
                ));
            }
        };
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|at| Timestamp::from_datetime(&at))
            .map_err(|error| {
                self.mistake(
                    &value.span(),
                    place,
                    format!("{text:?} is not an RFC 3339 date-time ({error})"),
                    fix,
                )
            })
    }

    fn route(&self, index: usize, raw: &RawRoute) -> Result<RouteRule, PolicyError> {
        let place = format!("routes[{index}]");
        let exempt = raw.exempt.as_ref().is_some_and(|exempt| *exempt.get_ref());
        if let (Some(cost), Some(flag)) = (&raw.cost, &raw.exempt)
            && exempt
        {
            let (key, span) = if flag.span().start > cost.span().start {
                ("exempt", flag.span())
            } else {
                ("cost", cost.span())
            };
            return Err(self.mistake(
                &span,
                &format!("{place}.{key}"),
                "a route cannot both cost points and be exempt",
                "remove cost (exempt routes are never charged), or remove exempt = true",
            ));
        }
        if let Some(billable) = &raw.billable
            && !exempt
        {
            return Err(self.mistake(
                &billable.span(),
                &format!("{place}.billable"),
                "billable applies only to exempt routes (every metered call is billable)",
                "add exempt = true, or remove billable",
            ));
        }
        let treatment = if exempt {
            Treatment::Exempt {
                billable: raw.billable.as_ref().is_none_or(|b| *b.get_ref()),
            }
        } else if let Some(cost) = &raw.cost {
            let points = self.whole(
                cost,
                &format!("{place}.cost"),
                "set a cost of at least 1, or mark the route exempt = true",
            )?;
            Treatment::cost(points).map_err(|error| self.model(&cost.span(), &place, error))?
        } else {
            Treatment::default()
        };
        RouteRule::parse(raw.pattern.get_ref(), treatment)
            .map_err(|error| self.model(&raw.pattern.span(), &place, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source<'_> {
        Source {
            path: Path::new("p.toml"),
            text,
        }
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        let src = source(text);
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(4), (1, 5));
        assert_eq!(src.position(6), (2, 1));
        let quote = text.find('"').expect("a quote");
        assert_eq!(src.position(quote), (2, 6));
        assert_eq!(src.position(text.len() + 10), (3, 1));
    }

    #[test]
    fn places_fall_back_to_the_enclosing_place() {
        let mut places = Places::default();
        places.note("orgs[1]".to_owned(), 10..14);
        places.note("orgs[1].overrides[0]".to_owned(), 20..24);
        assert_eq!(places.find("orgs[1].overrides[0].capacity"), Some(20..24));
        assert_eq!(places.find("orgs[1].keys[3]"), Some(10..14));
        assert_eq!(places.find("routes[0]"), None);
    }

    #[test]
    fn index_in_reads_the_index() {
        assert_eq!(index_in("tiers[3]", "tiers"), Some(3));
        assert_eq!(index_in("limits[12].name", "limits"), Some(12));
        assert_eq!(index_in("name", "tiers"), None);
    }

    #[test]
    fn keys_that_are_not_bare_are_quoted() {
        assert_eq!(plan_place("build"), "plans.build");
        assert_eq!(plan_place("two words"), "plans.\"two words\"");
    }

    #[test]
    fn serde_wording_becomes_policy_wording() {
        let (problem, fix) = describe("unknown field `capcity`, expected `window` or `capacity`");
        assert_eq!(problem, "unknown key `capcity`");
        assert!(fix.contains("`window` or `capacity`"), "{fix}");
        let (problem, fix) = describe("invalid type: string \"ten\", expected i64");
        assert_eq!(
            problem,
            "found the string \"ten\", but this must be an integer"
        );
        assert_eq!(fix, "write an integer here");
        let (problem, fix) = describe("missing field `tiers`");
        assert_eq!(problem, "the required key `tiers` is missing");
        assert_eq!(fix, "add `tiers`");
    }
}
