-- Target tables of specs/events.yaml (one queue of mixed events, routed by type).
-- `etl-engine ddl specs/events.yaml` prints the same tables with unbounded types.
-- ip, card_last4: tokens whose originals are in the vault (vault-decrypt, audited).
-- (message_id, position) names the event: the message that brought it and its place in it.
CREATE TABLE IF NOT EXISTS page_views(
    user_id varchar(64) NOT NULL,
    url varchar(2048) NOT NULL,
    ip varchar(64),
    ts timestamptz NOT NULL,
    message_id varchar(128) NOT NULL,
    position integer NOT NULL,
    UNIQUE (message_id, position)
);

CREATE TABLE IF NOT EXISTS event_purchases(
    user_id varchar(64) NOT NULL,
    amount_cents bigint NOT NULL,
    card_last4 varchar(64),
    ts timestamptz NOT NULL,
    message_id varchar(128) NOT NULL,
    position integer NOT NULL,
    UNIQUE (message_id, position)
);
