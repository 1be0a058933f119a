//! Deterministic login messages for the benchmark: the same seed and count always give the same
//! file, so every measurement of one run (and of runs on other machines) sees the same data.
//!
//! About 1% of the messages are invalid in the ways real traffic is (another message shape, broken
//! JSON, a missing required field, a version that cannot be encoded); the rest look like the login
//! events of `examples/logins.jsonl`, with a pool of "hot" IPs and device ids so that tokens repeat
//! and the vault's de-duplication is exercised.

use serde_json::json;
use std::io::Write;

/// splitmix64: tiny, fast and good enough for test data; no dependency needed.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const VERSIONS: &[&str] = &[
    "0.96", "2.00", "9.10", "2.3.0", "10.2.1", "3", "2.3.4", "5.1.0",
];
const LOCALES: &[&str] = &["RU", "US", "IN", "BR", "DE", "FR", "JP", "GB"];
const DEVICE_TYPES: &[&str] = &["android", "ios", "Android", "iOS"];
/// One message in this many is invalid.
const INVALID_EVERY: usize = 100;

fn uuid4(r: &mut Rng) -> String {
    let (a, b) = (r.next_u64(), r.next_u64());
    let v = (u128::from(a) << 64 | u128::from(b)) & !(0xF << 76) | (0x4 << 76);
    let v = v & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn ip(r: &mut Rng) -> String {
    format!(
        "{}.{}.{}.{}",
        1 + r.below(223),
        r.below(256),
        r.below(256),
        1 + r.below(254)
    )
}

fn device_id(r: &mut Rng) -> String {
    format!(
        "{:03}-{:02}-{:04}",
        r.below(1000),
        r.below(100),
        r.below(10000)
    )
}

/// What was written.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    pub messages: usize,
    pub valid: usize,
    pub invalid: usize,
}

/// Writes `n` message bodies, one per line, to `out`.
pub fn write(n: usize, seed: u64, out: &mut impl Write) -> std::io::Result<Counts> {
    let mut r = Rng::new(seed);
    let hot_ips: Vec<String> = (0..200).map(|_| ip(&mut r)).collect();
    let hot_devices: Vec<String> = (0..500).map(|_| device_id(&mut r)).collect();
    let mut counts = Counts {
        messages: n,
        ..Default::default()
    };
    for i in 0..n {
        let line = if i % INVALID_EVERY == INVALID_EVERY / 2 {
            counts.invalid += 1;
            match (i / INVALID_EVERY) % 4 {
                0 => json!({"foo": "oops_wrong_msg_type", "bar": (r.below(1000)).to_string()}).to_string(),
                1 => format!("{{\"user_id\": \"{}\", \"ip\": ", uuid4(&mut r)),
                2 => json!({"app_version": "2.3.0", "device_type": "ios", "ip": ip(&mut r), "locale": "US", "device_id": device_id(&mut r)})
                    .to_string(),
                _ => json!({"user_id": uuid4(&mut r), "app_version": "2.3-beta", "device_type": "ios", "ip": ip(&mut r),
                            "locale": "US", "device_id": device_id(&mut r)})
                .to_string(),
            }
        } else {
            counts.valid += 1;
            let ip = if r.below(10) == 0 {
                hot_ips[r.below(hot_ips.len() as u64) as usize].clone()
            } else {
                ip(&mut r)
            };
            let dev = if r.below(10) == 0 {
                hot_devices[r.below(hot_devices.len() as u64) as usize].clone()
            } else {
                device_id(&mut r)
            };
            let locale = if r.below(12) == 0 {
                serde_json::Value::Null
            } else {
                LOCALES[r.below(LOCALES.len() as u64) as usize].into()
            };
            json!({
                "user_id": uuid4(&mut r),
                "app_version": VERSIONS[r.below(VERSIONS.len() as u64) as usize],
                "device_type": DEVICE_TYPES[r.below(DEVICE_TYPES.len() as u64) as usize],
                "ip": ip,
                "locale": locale,
                "device_id": dev,
            })
            .to_string()
        };
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(counts)
}

/// What [`pad`] adds to a JSON object besides the padding itself: `,"padding":""`.
const PAD_FIELD_OVERHEAD: usize = r#","padding":"""#.len();

/// Pads a message body to exactly `bytes` bytes (for the large-body measurement): a JSON object
/// gets an extra string field `padding`, which no column reads, so a valid message stays valid
/// and an invalid one stays invalid for the same reason; a body that is not a JSON object
/// (broken JSON) gets trailing spaces, which leave it just as broken. A body already that long
/// (or too close to it for the extra field) is returned as it is.
pub fn pad(body: &str, bytes: usize) -> String {
    let is_object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(body)
        .is_ok_and(|m| !m.is_empty());
    let trimmed = body.trim_end();
    if is_object && trimmed.len() + PAD_FIELD_OVERHEAD <= bytes {
        let open = &trimmed[..trimmed.len() - 1]; // without the closing brace
        let fill = bytes - trimmed.len() - PAD_FIELD_OVERHEAD;
        let mut s = String::with_capacity(bytes);
        s.push_str(open);
        s.push_str(r#","padding":""#);
        s.extend(std::iter::repeat_n('x', fill));
        s.push_str("\"}");
        s
    } else if !is_object && body.len() < bytes {
        let mut s = String::with_capacity(bytes);
        s.push_str(body);
        s.extend(std::iter::repeat_n(' ', bytes - body.len()));
        s
    } else {
        body.to_string()
    }
}
