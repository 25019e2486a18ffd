-- sos-audit: audit before write holds even when the host's write ends the transaction itself.
--
-- `PgAuditChain::audited` marks its transaction unsettled (the transaction-local setting
-- `sos_audit.unsettled`) from the audit insert until the host's write has been checked. A host
-- write that issues COMMIT in between fails here, and its transaction rolls back, instead of
-- committing the audit entry without its checked write.
CREATE FUNCTION audit_entries_require_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sos_audit.unsettled', true) = 'on' THEN
        RAISE EXCEPTION 'an audited write ended its transaction before its row count was checked'
            USING ERRCODE = 'invalid_transaction_termination';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER audit_entries_settled
    AFTER INSERT ON audit_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION audit_entries_require_settled();
