
SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE public.chunks (
    id bigint NOT NULL,
    merchant_id text NOT NULL,
    type text NOT NULL,
    start_ms bigint NOT NULL,
    end_ms bigint NOT NULL,
    status text NOT NULL,
    export_id text,
    exports_created integer DEFAULT 0 NOT NULL,
    completed_at_ms bigint,
    last_error text,
    last_error_at_ms bigint,
    updated_at_ms bigint NOT NULL,
    lost_creates integer DEFAULT 0 NOT NULL,
    CONSTRAINT chunks_check CHECK ((start_ms < end_ms)),
    CONSTRAINT chunks_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'exporting'::text, 'downloading'::text, 'complete'::text, 'failed'::text]))),
    CONSTRAINT chunks_type_check CHECK ((type = ANY (ARRAY['PAYMENTS'::text, 'ORDERS'::text])))
);

CREATE SEQUENCE public.chunks_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.chunks_id_seq OWNED BY public.chunks.id;

CREATE TABLE public.claims (
    chunk_id bigint NOT NULL,
    owner text NOT NULL,
    claimed_at_ms bigint NOT NULL
);

CREATE TABLE public.exports (
    id text NOT NULL,
    chunk_id bigint NOT NULL,
    state text NOT NULL,
    status text NOT NULL,
    percent double precision NOT NULL,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL,
    available_until_ms bigint,
    urls text DEFAULT '[]'::text NOT NULL,
    seq bigint NOT NULL,
    CONSTRAINT exports_state_check CHECK ((state = ANY (ARRAY['running'::text, 'done'::text, 'failed'::text, 'expired'::text, 'lost'::text])))
);

CREATE SEQUENCE public.exports_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.exports_seq_seq OWNED BY public.exports.seq;

CREATE TABLE public.hosts (
    host text NOT NULL,
    slot_limit integer NOT NULL,
    run integer DEFAULT 0 NOT NULL,
    grants bigint DEFAULT 0 NOT NULL,
    busy_until_ms bigint,
    CONSTRAINT hosts_slot_limit_check CHECK ((slot_limit >= 1))
);

CREATE TABLE public.parts (
    export_id text NOT NULL,
    part_index integer NOT NULL,
    url_index integer NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    objects integer NOT NULL,
    CONSTRAINT parts_objects_check CHECK ((objects >= 0)),
    CONSTRAINT parts_part_index_check CHECK ((part_index >= 1)),
    CONSTRAINT parts_size_check CHECK ((size >= 0)),
    CONSTRAINT parts_url_index_check CHECK ((url_index >= 0))
);

CREATE TABLE public.processes (
    id text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    machine text NOT NULL,
    command text NOT NULL,
    started_at_ms bigint NOT NULL,
    lease_until_ms bigint NOT NULL
);

CREATE TABLE public.refresh_tokens (
    merchant_id text NOT NULL,
    token text NOT NULL,
    expires_at_ms bigint,
    updated_at_ms bigint NOT NULL
);

CREATE TABLE public.schema_version (
    version integer NOT NULL
);

CREATE TABLE public.served (
    host text NOT NULL,
    merchant_id text NOT NULL,
    last_grant bigint NOT NULL
);

CREATE TABLE public.slot_waiters (
    id bigint NOT NULL,
    host text NOT NULL,
    owner text NOT NULL,
    merchant_id text NOT NULL,
    since_ms bigint NOT NULL
);

CREATE SEQUENCE public.slot_waiters_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.slot_waiters_id_seq OWNED BY public.slot_waiters.id;

CREATE TABLE public.slots (
    id bigint NOT NULL,
    host text NOT NULL,
    owner text NOT NULL,
    merchant_id text NOT NULL,
    granted_at_ms bigint NOT NULL
);

CREATE SEQUENCE public.slots_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.slots_id_seq OWNED BY public.slots.id;

CREATE TABLE public.token_locks (
    merchant_id text NOT NULL,
    owner text NOT NULL,
    since_ms bigint NOT NULL
);

ALTER TABLE ONLY public.chunks ALTER COLUMN id SET DEFAULT nextval('public.chunks_id_seq'::regclass);

ALTER TABLE ONLY public.exports ALTER COLUMN seq SET DEFAULT nextval('public.exports_seq_seq'::regclass);

ALTER TABLE ONLY public.slot_waiters ALTER COLUMN id SET DEFAULT nextval('public.slot_waiters_id_seq'::regclass);

ALTER TABLE ONLY public.slots ALTER COLUMN id SET DEFAULT nextval('public.slots_id_seq'::regclass);

INSERT INTO public.chunks VALUES (1, 'MERCHANTAAA01', 'PAYMENTS', 1735689600000, 1738281600000, 'complete', 'EXPORTDONE01', 1, 1748779205000, NULL, NULL, 1748779205000, 0);
INSERT INTO public.chunks VALUES (2, 'MERCHANTAAA01', 'PAYMENTS', 1738281600000, 1740873600000, 'exporting', 'EXPORTRUN002', 1, NULL, NULL, NULL, 1748779206000, 0);
INSERT INTO public.chunks VALUES (3, 'MERCHANTAAA01', 'PAYMENTS', 1740873600000, 1743465600000, 'failed', NULL, 1, NULL, 'gave up', 1748779210000, 1748779210000, 0);
INSERT INTO public.chunks VALUES (4, 'MERCHANTBBB02', 'ORDERS', 1735689600000, 1738281600000, 'pending', NULL, 0, NULL, NULL, NULL, 1748779202000, 1);

INSERT INTO public.claims VALUES (2, 'proc-1', 1748779207000);

INSERT INTO public.exports VALUES ('EXPORTDONE01', 1, 'done', 'DONE', 100, 1748779203000, 1748779204000, 1748865600000, '["https://files.example/1", "https://files.example/2"]', 1);
INSERT INTO public.exports VALUES ('EXPORTRUN002', 2, 'running', 'IN_PROGRESS', 40, 1748779206000, 1748779206000, NULL, '[]', 2);
INSERT INTO public.exports VALUES ('EXPORTBAD003', 3, 'failed', 'PENDING', 0, 1748779208000, 1748779209000, NULL, '[]', 3);

INSERT INTO public.hosts VALUES ('api.clover.com', 2, 0, 1, 1748779500000);

INSERT INTO public.parts VALUES ('EXPORTDONE01', 1, 0, 1234, '0000000000000000000000000000000000000000000000000000000000000001', 10);
INSERT INTO public.parts VALUES ('EXPORTDONE01', 2, 1, 2468, '0000000000000000000000000000000000000000000000000000000000000002', 20);

INSERT INTO public.processes VALUES ('proc-1', 'host', 42, 'machine', 'backfill', 1748779200000, 2064139200000);

INSERT INTO public.refresh_tokens VALUES ('MERCHANTAAA01', 'refresh-token-for-the-fixture', 1751371200000, 1748779211000);

INSERT INTO public.schema_version VALUES (1);

INSERT INTO public.served VALUES ('api.clover.com', 'MERCHANTAAA01', 1);

INSERT INTO public.slots VALUES (1, 'api.clover.com', 'proc-1', 'MERCHANTAAA01', 1748779212000);

INSERT INTO public.token_locks VALUES ('MERCHANTBBB02', 'proc-1', 1748779214000);

SELECT pg_catalog.setval('public.chunks_id_seq', 4, true);

SELECT pg_catalog.setval('public.exports_seq_seq', 3, true);

SELECT pg_catalog.setval('public.slot_waiters_id_seq', 1, true);

SELECT pg_catalog.setval('public.slots_id_seq', 1, true);

ALTER TABLE ONLY public.chunks
    ADD CONSTRAINT chunks_merchant_id_type_start_ms_end_ms_key UNIQUE (merchant_id, type, start_ms, end_ms);

ALTER TABLE ONLY public.chunks
    ADD CONSTRAINT chunks_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.claims
    ADD CONSTRAINT claims_pkey PRIMARY KEY (chunk_id);

ALTER TABLE ONLY public.exports
    ADD CONSTRAINT exports_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.hosts
    ADD CONSTRAINT hosts_pkey PRIMARY KEY (host);

ALTER TABLE ONLY public.parts
    ADD CONSTRAINT parts_pkey PRIMARY KEY (export_id, part_index);

ALTER TABLE ONLY public.processes
    ADD CONSTRAINT processes_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.refresh_tokens
    ADD CONSTRAINT refresh_tokens_pkey PRIMARY KEY (merchant_id);

ALTER TABLE ONLY public.served
    ADD CONSTRAINT served_pkey PRIMARY KEY (host, merchant_id);

ALTER TABLE ONLY public.slot_waiters
    ADD CONSTRAINT slot_waiters_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.slots
    ADD CONSTRAINT slots_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.token_locks
    ADD CONSTRAINT token_locks_pkey PRIMARY KEY (merchant_id);

CREATE INDEX claims_by_owner ON public.claims USING btree (owner);

CREATE INDEX exports_by_chunk ON public.exports USING btree (chunk_id);

CREATE INDEX slots_by_host ON public.slots USING btree (host);

ALTER TABLE ONLY public.chunks
    ADD CONSTRAINT chunks_export_id_fkey FOREIGN KEY (export_id) REFERENCES public.exports(id);

ALTER TABLE ONLY public.claims
    ADD CONSTRAINT claims_chunk_id_fkey FOREIGN KEY (chunk_id) REFERENCES public.chunks(id);

ALTER TABLE ONLY public.claims
    ADD CONSTRAINT claims_owner_fkey FOREIGN KEY (owner) REFERENCES public.processes(id);

ALTER TABLE ONLY public.exports
    ADD CONSTRAINT exports_chunk_id_fkey FOREIGN KEY (chunk_id) REFERENCES public.chunks(id);

ALTER TABLE ONLY public.parts
    ADD CONSTRAINT parts_export_id_fkey FOREIGN KEY (export_id) REFERENCES public.exports(id);

ALTER TABLE ONLY public.slot_waiters
    ADD CONSTRAINT slot_waiters_owner_fkey FOREIGN KEY (owner) REFERENCES public.processes(id);

ALTER TABLE ONLY public.slots
    ADD CONSTRAINT slots_owner_fkey FOREIGN KEY (owner) REFERENCES public.processes(id);

ALTER TABLE ONLY public.token_locks
    ADD CONSTRAINT token_locks_owner_fkey FOREIGN KEY (owner) REFERENCES public.processes(id);

