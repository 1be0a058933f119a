-- Target table of specs/logins.yaml, exactly as its users already have it (see README: PII model).
-- masked_ip, masked_device_id: keyed tokens whose originals are in the vault (recoverable, audited).
-- app_version: version_to_int encoding; create_date: the SQS SentTimestamp as a date.
CREATE TABLE IF NOT EXISTS user_logins(user_id varchar(128), device_type varchar(32), masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date);
