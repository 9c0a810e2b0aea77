-- What `partnerstack-sync check` learned about the PartnerStack account: one row per
-- question it settled (`src/check/`). `account` is a digest of the API root and public
-- key, so answers about one account never steer a service pointed at another. The
-- service reads the answers that change its behaviour at start-up (`src/check/settled.rs`).
CREATE TABLE account_answers (
    account    text        NOT NULL,
    question   text        NOT NULL,
    answer     text        NOT NULL,
    observed   text        NOT NULL,
    settled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, question)
);
