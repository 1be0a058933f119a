-- Target tables of specs/orders.yaml (orders with line items, upserted by key).
-- `etl-engine ddl specs/orders.yaml` prints the same tables with unbounded types; these bound
-- the sizes. email, street: tokens whose originals are in the vault (vault-decrypt, audited);
-- phone: a token of the digits only (hash, not recoverable).
CREATE TABLE IF NOT EXISTS orders(
    order_id varchar(64) PRIMARY KEY,
    email varchar(64) NOT NULL,
    phone varchar(64),
    street varchar(64),
    zip varchar(16),
    total numeric(12,2) NOT NULL,
    placed_at timestamptz NOT NULL
);

-- One row per item, numbered from 1 in the order of the message's `items`.
CREATE TABLE IF NOT EXISTS order_items(
    order_id varchar(64) NOT NULL,
    line integer NOT NULL,
    sku varchar(64) NOT NULL,
    qty integer NOT NULL,
    price numeric(12,2) NOT NULL,
    placed_at timestamptz NOT NULL,
    PRIMARY KEY (order_id, line)
);
