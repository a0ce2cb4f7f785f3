PRAGMA user_version = 4;
BEGIN TRANSACTION;
CREATE TABLE chunks (
            id INTEGER PRIMARY KEY,
            merchant_id TEXT NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('PAYMENTS', 'ORDERS')),
            start_ms INTEGER NOT NULL,
            end_ms INTEGER NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'exporting', 'downloading', 'complete', 'failed')),
            export_id TEXT REFERENCES exports (id),
            exports_created INTEGER NOT NULL DEFAULT 0,
            completed_at_ms INTEGER,
            last_error TEXT,
            last_error_at_ms INTEGER,
            updated_at_ms INTEGER NOT NULL, lost_creates INTEGER NOT NULL DEFAULT 0,
            UNIQUE (merchant_id, type, start_ms, end_ms),
            CHECK (start_ms < end_ms)
        );
INSERT INTO "chunks" VALUES(1,'MERCHANTAAA01','PAYMENTS',1735689600000,1738281600000,'complete','EXPORTDONE01',1,1748779205000,NULL,NULL,1748779205000,0);
INSERT INTO "chunks" VALUES(2,'MERCHANTAAA01','PAYMENTS',1738281600000,1740873600000,'exporting','EXPORTRUN002',1,NULL,NULL,NULL,1748779206000,0);
INSERT INTO "chunks" VALUES(3,'MERCHANTAAA01','PAYMENTS',1740873600000,1743465600000,'failed',NULL,1,NULL,'gave up',1748779210000,1748779210000,0);
INSERT INTO "chunks" VALUES(4,'MERCHANTBBB02','ORDERS',1735689600000,1738281600000,'pending',NULL,0,NULL,NULL,NULL,1748779202000,1);
CREATE TABLE claims (
            chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id),
            owner TEXT NOT NULL REFERENCES processes (id),
            claimed_at_ms INTEGER NOT NULL
        );
INSERT INTO "claims" VALUES(2,'proc-1',1748779207000);
CREATE TABLE exports (
            id TEXT PRIMARY KEY,
            chunk_id INTEGER NOT NULL REFERENCES chunks (id),
            state TEXT NOT NULL
                CHECK (state IN ('running', 'done', 'failed', 'expired', 'lost')),
            status TEXT NOT NULL,
            percent REAL NOT NULL,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            available_until_ms INTEGER,
            urls TEXT NOT NULL DEFAULT '[]'
        );
INSERT INTO "exports" VALUES('EXPORTDONE01',1,'done','DONE',100.0,1748779203000,1748779204000,1748865600000,'["https://files.example/1", "https://files.example/2"]');
INSERT INTO "exports" VALUES('EXPORTRUN002',2,'running','IN_PROGRESS',40.0,1748779206000,1748779206000,NULL,'[]');
INSERT INTO "exports" VALUES('EXPORTBAD003',3,'failed','PENDING',0.0,1748779208000,1748779209000,NULL,'[]');
CREATE TABLE hosts (
            host TEXT PRIMARY KEY,
            slot_limit INTEGER NOT NULL CHECK (slot_limit >= 1),
            run INTEGER NOT NULL DEFAULT 0,
            grants INTEGER NOT NULL DEFAULT 0,
            busy_until_ms INTEGER
        );
INSERT INTO "hosts" VALUES('api.clover.com',2,0,1,1748779500000);
CREATE TABLE parts (
            export_id TEXT NOT NULL REFERENCES exports (id),
            part_index INTEGER NOT NULL CHECK (part_index >= 1),
            url_index INTEGER NOT NULL CHECK (url_index >= 0),
            size INTEGER NOT NULL CHECK (size >= 0),
            sha256 TEXT NOT NULL,
            objects INTEGER NOT NULL CHECK (objects >= 0),
            PRIMARY KEY (export_id, part_index)
        );
INSERT INTO "parts" VALUES('EXPORTDONE01',1,0,1234,'0000000000000000000000000000000000000000000000000000000000000001',10);
INSERT INTO "parts" VALUES('EXPORTDONE01',2,1,2468,'0000000000000000000000000000000000000000000000000000000000000002',20);
CREATE TABLE processes (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            machine TEXT NOT NULL,
            command TEXT NOT NULL,
            started_at_ms INTEGER NOT NULL,
            lease_until_ms INTEGER NOT NULL
        );
INSERT INTO "processes" VALUES('proc-1','host',42,'machine','backfill',1748779200000,2064139200000);
CREATE TABLE refresh_tokens (
            merchant_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            expires_at_ms INTEGER,
            updated_at_ms INTEGER NOT NULL
        );
INSERT INTO "refresh_tokens" VALUES('MERCHANTAAA01','refresh-token-for-the-fixture',1751371200000,1748779211000);
CREATE TABLE served (
            host TEXT NOT NULL,
            merchant_id TEXT NOT NULL,
            last_grant INTEGER NOT NULL,
            PRIMARY KEY (host, merchant_id)
        );
INSERT INTO "served" VALUES('api.clover.com','MERCHANTAAA01',1);
CREATE TABLE slot_waiters (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            since_ms INTEGER NOT NULL
        );
CREATE TABLE slots (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL,
            owner TEXT NOT NULL REFERENCES processes (id),
            merchant_id TEXT NOT NULL,
            granted_at_ms INTEGER NOT NULL
        );
INSERT INTO "slots" VALUES(1,'api.clover.com','proc-1','MERCHANTAAA01',1748779212000);
CREATE TABLE token_locks (
            merchant_id TEXT PRIMARY KEY,
            owner TEXT NOT NULL REFERENCES processes (id),
            since_ms INTEGER NOT NULL
        );
INSERT INTO "token_locks" VALUES('MERCHANTBBB02','proc-1',1748779214000);
CREATE INDEX exports_by_chunk ON exports (chunk_id);
CREATE INDEX claims_by_owner ON claims (owner);
CREATE INDEX slots_by_host ON slots (host);
COMMIT;
