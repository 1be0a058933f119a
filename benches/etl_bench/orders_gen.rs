//! Deterministic order messages for the EO/DO rows of the benchmark, in the shape
//! `specs/orders.yaml` reads: an order with a customer (email, phone, address), 1–4 items, a
//! total in cents and an RFC 3339 `placed_at`.
//!
//! Like real order traffic, about one message in ten is a newer version of an order sent before
//! (an update: the upsert rewrites the row), one in fifty an older version arriving late (the
//! `only_if_newer` rule leaves the row alone), and customers come back (5,000 of them), so
//! vault tokens repeat. About 1% are invalid (no `placed_at`, a quantity that is not a number,
//! an item without a sku). Every version of an order has the same number of items, so the final
//! item rows are exactly the items of the distinct valid orders.

use crate::datagen::Rng;
use serde_json::json;
use std::io::Write;

/// Distinct customers orders are drawn from.
const CUSTOMERS: u64 = 5_000;
/// One message in this many is invalid.
const INVALID_EVERY: usize = 100;
/// Seconds from 2024-01-01T00:00:00Z, the first `placed_at`.
const EPOCH_2024: i64 = 1_704_067_200;

/// What was written: `valid` and `invalid` messages, and the rows the upserts end with.
#[derive(Debug, Default, serde::Serialize)]
pub struct OrderCounts {
    /// Messages written.
    pub messages: usize,
    /// Messages the spec accepts.
    pub valid: usize,
    /// Messages the spec rejects.
    pub invalid: usize,
    /// Distinct orders among the valid messages: the rows `orders` ends with.
    pub orders: usize,
    /// Their items: the rows `order_items` ends with.
    pub items: usize,
}

/// One order as first sent.
struct Order {
    /// Customer number.
    customer: u64,
    /// Item count (1–4), the same in every version.
    items: usize,
    /// Seconds after [`EPOCH_2024`] of the first version.
    placed: i64,
    /// Whether any valid version was written.
    valid: bool,
}

/// A message body for version `version_secs` of order number `id`; `broken` picks an invalid
/// form (0: none).
fn body(r: &mut Rng, id: usize, o: &Order, version_secs: i64, broken: u64) -> String {
    let c = o.customer;
    let items: Vec<serde_json::Value> = (0..o.items)
        .map(|k| {
            let qty = 1 + r.below(5);
            let mut item = json!({"sku": format!("SKU-{:04}", (c * 7 + k as u64 * 13) % 2000),
                                   "qty": qty, "price_cents": 99 + r.below(20_000)});
            if broken == 2 && k == 0 {
                item["qty"] = json!("two");
            }
            if broken == 3 && k + 1 == o.items {
                item.as_object_mut().map(|m| m.remove("sku"));
            }
            item
        })
        .collect();
    let total: u64 = items
        .iter()
        .map(|i| i["qty"].as_u64().unwrap_or(1) * i["price_cents"].as_u64().unwrap_or(0))
        .sum();
    let placed = chrono::DateTime::from_timestamp(EPOCH_2024 + version_secs, 0)
        .unwrap_or_default()
        .to_rfc3339();
    let mut v = json!({
        "order_id": format!("ord-{id:08}"),
        "customer": {
            "email": format!(" Customer{c}@Example.com "),
            "phone": format!("+1 (555) {:03}-{:04}", c / 10_000, c % 10_000),
            "address": {"street": format!("{} Main St", 1 + c), "zip": format!("{:05}", 10_000 + c % 90_000)},
        },
        "items": items,
        "total_cents": total,
        "placed_at": placed,
    });
    if broken == 1 {
        v.as_object_mut().map(|m| m.remove("placed_at"));
    }
    v.to_string()
}

/// Writes `n` order messages, one per line, to `out`.
pub fn write(n: usize, seed: u64, out: &mut impl Write) -> std::io::Result<OrderCounts> {
    let mut r = Rng::new(seed);
    let mut orders: Vec<Order> = Vec::with_capacity(n);
    let mut counts = OrderCounts {
        messages: n,
        ..Default::default()
    };
    for i in 0..n {
        let broken = if i % INVALID_EVERY == INVALID_EVERY / 2 {
            1 + (i / INVALID_EVERY) as u64 % 3
        } else {
            0
        };
        let pick = r.below(100);
        let line = if pick < 12 && !orders.is_empty() {
            // Another version of an earlier order: newer (10 in 12) or older, arriving late.
            let id = r.below(orders.len() as u64) as usize;
            let shift = 1 + r.below(3_600) as i64;
            let secs = if pick < 10 {
                orders[id].placed + shift
            } else {
                orders[id].placed - shift
            };
            if broken == 0 {
                orders[id].valid = true;
            }
            let o = &orders[id];
            body(&mut r, id, o, secs, broken)
        } else {
            let o = Order {
                customer: r.below(CUSTOMERS),
                items: 1 + r.below(4) as usize,
                placed: i as i64 * 7,
                valid: broken == 0,
            };
            let line = body(&mut r, orders.len(), &o, o.placed, broken);
            orders.push(o);
            line
        };
        if broken == 0 {
            counts.valid += 1;
        } else {
            counts.invalid += 1;
        }
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    for o in orders.iter().filter(|o| o.valid) {
        counts.orders += 1;
        counts.items += o.items;
    }
    Ok(counts)
}
