-- sos-audit: refuse malformed rows at the door (SQLite stores any type in any column), and keep
-- head rows from being removed.
CREATE TRIGGER audit_entries_well_formed
    BEFORE INSERT ON audit_entries
    WHEN typeof(NEW.tenant) <> 'text'
      OR length(NEW.tenant) NOT BETWEEN 1 AND 64
      OR NEW.tenant GLOB '*[^a-z0-9_-]*'
      OR substr(NEW.tenant, 1, 1) IN ('-', '_')
      OR typeof(NEW.seq) <> 'integer'
      OR typeof(NEW.time_us) <> 'integer'
      OR typeof(NEW.actor) <> 'text'
      OR typeof(NEW.action) <> 'text'
      OR typeof(NEW.subject) <> 'text'
      OR typeof(NEW.payload) <> 'text'
      OR typeof(NEW.prev_hash) <> 'blob' OR length(NEW.prev_hash) <> 32
      OR typeof(NEW.hash) <> 'blob' OR length(NEW.hash) <> 32
BEGIN
    SELECT RAISE(ABORT, 'audit_entries row is malformed: wrong type, tenant id or hash length');
END;

CREATE TRIGGER audit_heads_well_formed_insert
    BEFORE INSERT ON audit_heads
    WHEN typeof(NEW.tenant) <> 'text'
      OR length(NEW.tenant) NOT BETWEEN 1 AND 64
      OR NEW.tenant GLOB '*[^a-z0-9_-]*'
      OR substr(NEW.tenant, 1, 1) IN ('-', '_')
      OR typeof(NEW.seq) <> 'integer'
      OR typeof(NEW.hash) <> 'blob' OR length(NEW.hash) <> 32
BEGIN
    SELECT RAISE(ABORT, 'audit_heads row is malformed: wrong type, tenant id or hash length');
END;

CREATE TRIGGER audit_heads_well_formed_update
    BEFORE UPDATE ON audit_heads
    WHEN NEW.tenant IS NOT OLD.tenant
      OR typeof(NEW.seq) <> 'integer'
      OR typeof(NEW.hash) <> 'blob' OR length(NEW.hash) <> 32
BEGIN
    SELECT RAISE(ABORT, 'audit_heads row is malformed: wrong type or hash length, or a changed tenant');
END;

CREATE TRIGGER audit_heads_no_delete
    BEFORE DELETE ON audit_heads
BEGIN
    SELECT RAISE(ABORT, 'audit_heads rows are never removed: DELETE is not allowed');
END;
