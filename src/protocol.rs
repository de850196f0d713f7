//! The Where's My Fox wire format: command objects and device reports.
//!
//! Pure and free of I/O, so it can be fuzzed and benchmarked alone. Validation never coerces:
//! a value that is out of range, of the wrong type, or unknown is refused with a
//! [`ProtocolError`] that names the field (the 2014 server silently turned bad lock codes into
//! `0000`; we do not).
//!
//! Command object (owner → device), keys from the seed design:
//! - `l` lock: `{"c": "0123"}` (a 4-8 digit code; a JSON string keeps leading zeros, a JSON
//!   integer is accepted as the seed wrote it but cannot carry one)
//! - `m` message: `{"n": "+1 (408) 555-0100", "m": "Please return me"}` (`n` optional)
//! - `r` ring and `t` track: `{"p": 10, "d": 60}` (`d: 0` stops; then `p` may be left out)
//! - `e` erase: exactly `{}`

use serde_json::{Map, Value};
use std::fmt;

/// Longest ring or track period, in seconds.
pub const MAX_PERIOD_SECS: u64 = 3600;
/// Longest ring or track duration, in seconds.
pub const MAX_DURATION_SECS: u64 = 86_400;
/// Longest contact number, in characters.
pub const MAX_CONTACT_LEN: usize = 25;
/// Longest message text, in characters.
pub const MAX_MESSAGE_LEN: usize = 100;
/// Longest error string a device may report, in bytes (longer ones are cut at a char boundary).
pub const MAX_DEVICE_ERROR_LEN: usize = 200;

/// One of the five commands of the seed design. Serialized as its one-letter key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    #[serde(rename = "l")]
    Lock,
    #[serde(rename = "m")]
    Message,
    #[serde(rename = "r")]
    Ring,
    #[serde(rename = "t")]
    Track,
    #[serde(rename = "e")]
    Erase,
}

/// A validated command object: at most one entry per kind, in the canonical order l, m, r, t, e.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSet {
    entries: Vec<(Kind, Value)>,
}

/// What a device reports about one command it ran (`{"ok": true}` or `{"ok": false, "error": …}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
}

/// A position from a `t` report.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
    /// Device time of the fix, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Altitude in metres, when the device gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    /// Accuracy radius in metres, when the device gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
}

/// Everything a device says in the body of `POST /1/cmd/{id}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceReport {
    /// Replies to commands, in canonical kind order.
    pub replies: Vec<(Kind, Outcome)>,
    /// The position carried by a successful `t` reply.
    pub position: Option<Position>,
    /// `has_passcode`: whether the device has a lock code of its own.
    pub has_passcode: Option<bool>,
    /// Sequence/ack extension: the highest command sequence number the device has received.
    pub ack: Option<u64>,
}

/// A set of command kinds (five bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindSet(u8);

/// A refused field, with the reason in words a client developer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// Dotted path of the offending field, e.g. `l.c`; empty for the whole body.
    pub field: String,
    pub reason: String,
}

// === KindSet ===

impl KindSet {
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= 1 << kind as u8;
    }

    pub fn contains(self, kind: Kind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

// === Kind ===

impl Kind {
    /// All kinds in canonical order.
    pub const ALL: [Kind; 5] = [
        Kind::Lock,
        Kind::Message,
        Kind::Ring,
        Kind::Track,
        Kind::Erase,
    ];

    /// The one-letter wire key.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Lock => "l",
            Kind::Message => "m",
            Kind::Ring => "r",
            Kind::Track => "t",
            Kind::Erase => "e",
        }
    }

    pub fn from_key(key: &str) -> Option<Kind> {
        Some(match key {
            "l" => Kind::Lock,
            "m" => Kind::Message,
            "r" => Kind::Ring,
            "t" => Kind::Track,
            "e" => Kind::Erase,
            _ => return None,
        })
    }

    /// A word for logs and events.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Message => "message",
            Kind::Ring => "ring",
            Kind::Track => "track",
            Kind::Erase => "erase",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

// === ProtocolError ===

impl ProtocolError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ProtocolError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ProtocolError {}

// === CommandSet ===

impl CommandSet {
    /// Validates an owner's command object (the body of `POST /1/devices/{id}/cmd`).
    pub fn from_json(value: &Value) -> Result<CommandSet, ProtocolError> {
        let object = value
            .as_object()
            .ok_or_else(|| ProtocolError::new("", "the command must be a JSON object"))?;
        if object.is_empty() {
            return Err(ProtocolError::new(
                "",
                "the command object is empty: give at least one of l, m, r, t, e",
            ));
        }
        let mut entries = Vec::with_capacity(object.len());
        for (key, args) in object {
            let kind = Kind::from_key(key).ok_or_else(|| {
                ProtocolError::new(key.as_str(), "unknown command (expected l, m, r, t or e)")
            })?;
            validate_args(kind, args)?;
            entries.push((kind, args.clone()));
        }
        entries.sort_by_key(|(kind, _)| *kind);
        Ok(CommandSet { entries })
    }

    /// Parses and validates raw bytes.
    pub fn from_slice(body: &[u8]) -> Result<CommandSet, ProtocolError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ProtocolError::new("", format!("the body is not valid JSON: {e}")))?;
        CommandSet::from_json(&value)
    }

    pub fn entries(&self) -> &[(Kind, Value)] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<(Kind, Value)> {
        self.entries
    }

    /// The wire form: `{"l":{…},"r":{…}}`.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (kind, args) in &self.entries {
            map.insert(kind.key().to_owned(), args.clone());
        }
        Value::Object(map)
    }
}

fn validate_args(kind: Kind, args: &Value) -> Result<(), ProtocolError> {
    let key = kind.key();
    let object = args
        .as_object()
        .ok_or_else(|| ProtocolError::new(key, "the arguments must be a JSON object"))?;
    let allowed: &[&str] = match kind {
        Kind::Lock => &["c"],
        Kind::Message => &["n", "m"],
        Kind::Ring | Kind::Track => &["p", "d"],
        Kind::Erase => &[],
    };
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        let reason = if allowed.is_empty() {
            "erase takes no arguments: send exactly {}".to_owned()
        } else {
            format!("unknown argument (expected {})", allowed.join(", "))
        };
        return Err(ProtocolError::new(format!("{key}.{unknown}"), reason));
    }
    match kind {
        Kind::Lock => validate_lock_code(object.get("c")),
        Kind::Message => validate_message(object),
        Kind::Ring | Kind::Track => validate_period_duration(key, object),
        Kind::Erase => Ok(()),
    }
}

fn validate_lock_code(code: Option<&Value>) -> Result<(), ProtocolError> {
    const FIELD: &str = "l.c";
    let digits = match code {
        None => return Err(ProtocolError::new(FIELD, "a lock code is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(Value::Number(_)) => {
            return Err(ProtocolError::new(
                FIELD,
                "the lock code must be 4 to 8 digits (a whole, non-negative number or a string)",
            ));
        }
        Some(_) => {
            return Err(ProtocolError::new(
                FIELD,
                "the lock code must be a string of 4 to 8 digits",
            ));
        }
    };
    if !(4..=8).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::new(
            FIELD,
            "the lock code must be 4 to 8 digits, 0-9 only (send it as a string to keep a leading zero)",
        ));
    }
    Ok(())
}

fn validate_message(object: &Map<String, Value>) -> Result<(), ProtocolError> {
    if let Some(number) = object.get("n") {
        let number = number
            .as_str()
            .ok_or_else(|| ProtocolError::new("m.n", "the contact number must be a string"))?;
        if number.chars().count() > MAX_CONTACT_LEN {
            return Err(ProtocolError::new(
                "m.n",
                format!("the contact number is longer than {MAX_CONTACT_LEN} characters"),
            ));
        }
        if let Some(bad) = number.chars().find(|c| !"0123456789 +-()".contains(*c)) {
            return Err(ProtocolError::new(
                "m.n",
                format!("the contact number may hold only 0-9, space and + - ( ), not {bad:?}"),
            ));
        }
    }
    let text = match object.get("m") {
        None => return Err(ProtocolError::new("m.m", "the message text is required")),
        Some(text) => text
            .as_str()
            .ok_or_else(|| ProtocolError::new("m.m", "the message text must be a string"))?,
    };
    if text.is_empty() || text.len() > MAX_MESSAGE_LEN {
        return Err(ProtocolError::new(
            "m.m",
            format!("the message text must be 1 to {MAX_MESSAGE_LEN} characters"),
        ));
    }
    if let Some(bad) = text.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(ProtocolError::new(
            "m.m",
            format!("the message text may hold only printable ASCII, not {bad:?}"),
        ));
    }
    Ok(())
}

fn validate_period_duration(key: &str, object: &Map<String, Value>) -> Result<(), ProtocolError> {
    let duration = match object.get("d") {
        None => {
            return Err(ProtocolError::new(
                format!("{key}.d"),
                "a duration in seconds is required (0 stops)",
            ));
        }
        Some(d) => whole_seconds(key, "d", d, 0, MAX_DURATION_SECS)?,
    };
    match object.get("p") {
        Some(p) => {
            whole_seconds(key, "p", p, 1, MAX_PERIOD_SECS)?;
        }
        None if duration > 0 => {
            return Err(ProtocolError::new(
                format!("{key}.p"),
                "a period in seconds is required unless d is 0",
            ));
        }
        None => {}
    }
    Ok(())
}

fn whole_seconds(
    key: &str,
    arg: &str,
    value: &Value,
    min: u64,
    max: u64,
) -> Result<u64, ProtocolError> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ProtocolError::new(
            format!("{key}.{arg}"),
            format!("must be a whole number of seconds from {min} to {max}"),
        )),
    }
}

// === DeviceReport ===

impl DeviceReport {
    /// Parses the body of a device's `POST /1/cmd/{id}`. An empty body counts as `{}`.
    /// The kinds whose commands must not be sent in the answer to this report.
    ///
    /// Why: a seed-format device resends the same replies when an answer is lost, and a
    /// reply carries no command id: it is charged to the oldest sent command of its kind. Were
    /// a newer command of kind K sent in the answer to a request carrying a K reply, and that
    /// answer lost, the resent reply would be charged to the newer command, which the device
    /// never received. Holding K back for that one answer (the device polls again at once)
    /// closes the race. A device using the ack extension needs no holding back: its replies
    /// only answer commands up to the `ack` sent with them.
    pub fn held_back(&self) -> KindSet {
        let mut kinds = KindSet::default();
        if self.ack.is_none() {
            for (kind, _) in &self.replies {
                kinds.insert(*kind);
            }
        }
        kinds
    }

    pub fn from_slice(body: &[u8]) -> Result<DeviceReport, ProtocolError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DeviceReport::default());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ProtocolError::new("", format!("the body is not valid JSON: {e}")))?;
        DeviceReport::from_json(&value)
    }

    pub fn from_json(value: &Value) -> Result<DeviceReport, ProtocolError> {
        let object = value
            .as_object()
            .ok_or_else(|| ProtocolError::new("", "the body must be a JSON object"))?;
        let mut report = DeviceReport::default();
        for (key, entry) in object {
            match key.as_str() {
                "has_passcode" => {
                    report.has_passcode = Some(entry.as_bool().ok_or_else(|| {
                        ProtocolError::new("has_passcode", "must be true or false")
                    })?);
                }
                "ack" => {
                    report.ack = Some(entry.as_u64().ok_or_else(|| {
                        ProtocolError::new("ack", "must be a whole, non-negative sequence number")
                    })?);
                }
                other => {
                    let kind = Kind::from_key(other).ok_or_else(|| {
                        ProtocolError::new(
                            other,
                            "unknown key (expected l, m, r, t, e, has_passcode or ack)",
                        )
                    })?;
                    let (outcome, position) = parse_reply(kind, entry)?;
                    if position.is_some() {
                        report.position = position;
                    }
                    report.replies.push((kind, outcome));
                }
            }
        }
        report.replies.sort_by_key(|(kind, _)| *kind);
        Ok(report)
    }
}

fn parse_reply(kind: Kind, entry: &Value) -> Result<(Outcome, Option<Position>), ProtocolError> {
    let key = kind.key();
    let object = entry
        .as_object()
        .ok_or_else(|| ProtocolError::new(key, "a reply must be a JSON object with \"ok\""))?;
    let ok = object
        .get("ok")
        .and_then(Value::as_bool)
        .ok_or_else(|| ProtocolError::new(format!("{key}.ok"), "must be true or false"))?;
    let error = match object.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(truncate(s, MAX_DEVICE_ERROR_LEN)),
        Some(_) => {
            return Err(ProtocolError::new(
                format!("{key}.error"),
                "must be a string",
            ));
        }
    };
    let allowed: &[&str] = if kind == Kind::Track {
        &["ok", "error", "la", "lo", "ti", "al", "acc"]
    } else {
        &["ok", "error"]
    };
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ProtocolError::new(
            format!("{key}.{unknown}"),
            format!("unknown field in a reply (expected {})", allowed.join(", ")),
        ));
    }
    let position = if kind == Kind::Track && ok {
        Some(parse_position(object)?)
    } else {
        None
    };
    Ok((Outcome { ok, error }, position))
}

fn parse_position(object: &Map<String, Value>) -> Result<Position, ProtocolError> {
    let number =
        |name: &str, min: f64, max: f64, required: bool| -> Result<Option<f64>, ProtocolError> {
            match object.get(name) {
                None if required => Err(ProtocolError::new(
                    format!("t.{name}"),
                    "is required in a successful track reply",
                )),
                None => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(n) if n.is_finite() && (min..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(ProtocolError::new(
                        format!("t.{name}"),
                        format!("must be a number from {min} to {max}"),
                    )),
                },
            }
        };
    let lat = number("la", -90.0, 90.0, true)?.unwrap_or_default();
    let lon = number("lo", -180.0, 180.0, true)?.unwrap_or_default();
    let alt = number("al", -20_000.0, 100_000.0, false)?;
    let acc = number("acc", 0.0, 1.0e7, false)?;
    let time = object
        .get("ti")
        .ok_or_else(|| ProtocolError::new("t.ti", "is required in a successful track reply"))?
        .as_u64()
        .ok_or_else(|| {
            ProtocolError::new(
                "t.ti",
                "must be a whole number: Unix time in seconds or milliseconds",
            )
        })?;
    // The seed's example is in seconds; Firefox OS sent milliseconds (a Geolocation timestamp).
    // Both are accepted: anything below 10^11 (the year 5138 in seconds) is taken as seconds.
    let time_ms = if time < 100_000_000_000 {
        time.saturating_mul(1000)
    } else {
        time
    };
    Ok(Position {
        lat,
        lon,
        time_ms,
        alt,
        acc,
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(value: Value) -> String {
        CommandSet::from_json(&value).unwrap_err().field
    }

    #[test]
    fn accepts_the_seed_examples() {
        for example in [
            json!({"l":{"c":1234}}),
            json!({"r":{"p":10,"d":60}}),
            json!({"m":{"n":"+1 (408) 555-555","m":"Help, I'm lost. Please return me!"}}),
            json!({"t":{"p":10,"d":300}}),
            json!({"e":{}}),
            json!({"l":{"c":1111},"m":{"n":"555-555-5555","m":"Please return me!"},"r":{"p":30,"d":300}}),
        ] {
            CommandSet::from_json(&example).unwrap();
        }
    }

    #[test]
    fn keeps_a_leading_zero_in_a_string_code() {
        let set = CommandSet::from_json(&json!({"l":{"c":"0123"}})).unwrap();
        assert_eq!(set.to_json(), json!({"l":{"c":"0123"}}));
    }

    #[test]
    fn refuses_bad_commands_naming_the_field() {
        assert_eq!(refused(json!({"l":{"c":"12a4"}})), "l.c");
        assert_eq!(refused(json!({"l":{"c":123}})), "l.c");
        assert_eq!(refused(json!({"l":{"c":"123456789"}})), "l.c");
        assert_eq!(refused(json!({"l":{"c":12.5}})), "l.c");
        assert_eq!(refused(json!({"l":{}})), "l.c");
        assert_eq!(refused(json!({"r":{"p":0,"d":10}})), "r.p");
        assert_eq!(refused(json!({"r":{"p":3601,"d":10}})), "r.p");
        assert_eq!(refused(json!({"t":{"p":10,"d":86401}})), "t.d");
        assert_eq!(refused(json!({"t":{"p":"10","d":5}})), "t.p");
        assert_eq!(refused(json!({"t":{"d":5}})), "t.p");
        assert_eq!(refused(json!({"m":{"n":"call me","m":"x"}})), "m.n");
        assert_eq!(
            refused(json!({"m":{"n":"12345678901234567890123456","m":"x"}})),
            "m.n"
        );
        assert_eq!(refused(json!({"m":{"m":""}})), "m.m");
        assert_eq!(refused(json!({"m":{"m":"caf\u{e9}"}})), "m.m");
        assert_eq!(refused(json!({"m":{"m":"a\nb"}})), "m.m");
        assert_eq!(refused(json!({"e":{"now":true}})), "e.now");
        assert_eq!(refused(json!({"x":{}})), "x");
        assert_eq!(refused(json!({})), "");
        assert_eq!(refused(json!([1])), "");
    }

    #[test]
    fn stop_needs_no_period() {
        CommandSet::from_json(&json!({"r":{"d":0}})).unwrap();
        CommandSet::from_json(&json!({"t":{"d":0,"p":5}})).unwrap();
    }

    #[test]
    fn parses_device_reports() {
        let report = DeviceReport::from_slice(
            br#"{"l":{"ok":true},"r":{"ok":false,"error":"no ringtone found"},"t":{"ok":true,"la":37.388017,"lo":-122.0833,"ti":1234567890},"has_passcode":true}"#,
        )
        .unwrap();
        assert_eq!(report.replies.len(), 3);
        assert_eq!(
            report.replies[1].1.error.as_deref(),
            Some("no ringtone found")
        );
        let position = report.position.unwrap();
        assert_eq!(position.time_ms, 1_234_567_890_000);
        assert_eq!(report.has_passcode, Some(true));
        assert_eq!(
            DeviceReport::from_slice(b"").unwrap(),
            DeviceReport::default()
        );
        assert_eq!(
            DeviceReport::from_slice(b"{}").unwrap(),
            DeviceReport::default()
        );
    }

    #[test]
    fn refuses_bad_reports() {
        for (body, field) in [
            (&br#"{"t":{"ok":true,"la":91,"lo":0,"ti":1}}"#[..], "t.la"),
            (br#"{"t":{"ok":true,"lo":0,"ti":1}}"#, "t.la"),
            (br#"{"r":{"ok":"yes"}}"#, "r.ok"),
            (br#"{"r":true}"#, "r"),
            (br#"{"zz":{"ok":true}}"#, "zz"),
            (br#"{"ack":-1}"#, "ack"),
            (br#"[]"#, ""),
            (br#"{"#, ""),
        ] {
            assert_eq!(
                DeviceReport::from_slice(body).unwrap_err().field,
                field,
                "{body:?}"
            );
        }
    }
}
