-- Target table of specs/purchases.yaml (the purchases pipeline).
-- email_token: keyed HMAC of the normalized email, no vault entry (joinable, not recoverable).
-- masked_street, masked_card_last4: tokens whose originals are in the vault (recoverable, audited).
-- skus, gift_skus: JSON arrays as text, e.g. ["SKU-TEA-01","SKU-MUG-02"].
CREATE TABLE IF NOT EXISTS purchases(
    order_id varchar(32) NOT NULL,
    customer_id varchar(64) NOT NULL,
    email_token varchar(64),
    masked_street varchar(64),
    city varchar(128),
    country char(2),
    payment_method varchar(16),
    masked_card_last4 varchar(64),
    amount_cents bigint NOT NULL,
    currency char(3),
    skus text,
    gift_skus text,
    is_gift boolean NOT NULL,
    coupon varchar(32),
    placed_at timestamptz NOT NULL,
    received_at timestamptz
);
