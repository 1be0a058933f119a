-- Target table of specs/signups.yaml (signups published to SNS, delivered to SQS as envelopes).
-- email, ip: tokens whose originals are in the vault (recoverable with vault-decrypt, audited).
-- sns_message_id: the SNS MessageId of the notification (not the SQS message id).
CREATE TABLE IF NOT EXISTS signups(
    user_id uuid PRIMARY KEY,
    email varchar(64) NOT NULL,
    ip varchar(64),
    plan varchar(32),
    signed_up_at timestamptz NOT NULL,
    sns_message_id varchar(64) NOT NULL
);
