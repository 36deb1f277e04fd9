-- Written by tests/data/stores_v1/make.py with the PostgresStore of commit 28fdf1c: its DDL, then its rows.
CREATE TABLE IF NOT EXISTS bot_events (
    seq BIGSERIAL PRIMARY KEY,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    body JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS bot_events_by_sender ON bot_events (sender, seq);
CREATE INDEX IF NOT EXISTS bot_events_by_sender_type ON bot_events (sender, type, seq);
INSERT INTO bot_events (seq, sender, type, body) VALUES (1, 'alice', 'user', '{"text": "Where is my order ES-1001?", "type": "user", "metadata": {"page": "/orders"}, "timestamp": 1790000000.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (2, 'bob', 'user', '{"text": "I want a person.", "type": "user", "timestamp": 1790000042.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (3, 'carol', 'user', '{"text": "Cancel my plan.", "type": "user", "timestamp": 1790000070.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (4, 'alice', 'action', '{"name": "check_order", "type": "action", "result": {"note": "é 日本", "status": "shipped"}, "arguments": {"order_id": "ES-1001"}, "timestamp": 1790000007.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (5, 'bob', 'handoff', '{"text": "I''m passing you to a colleague.", "type": "handoff", "reason": "asked for a person", "timestamp": 1790000049.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (6, 'carol', 'bot', '{"text": "Sorry to hear that. Which plan?", "type": "bot", "timestamp": 1790000077.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (7, 'alice', 'slot', '{"name": "order_id", "type": "slot", "value": "ES-1001", "timestamp": 1790000014.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (8, 'bob', 'user', '{"text": "Hello?", "type": "user", "timestamp": 1790000056.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (9, 'carol', 'user', '{"text": "The gold one.", "type": "user", "timestamp": 1790000084.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (10, 'alice', 'bot', '{"text": "It shipped yesterday.", "type": "bot", "timestamp": 1790000021.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (11, 'bob', 'agent', '{"text": "Hi, I''m Alex.", "type": "agent", "agent": "Alex", "timestamp": 1790000063.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (12, 'alice', 'user', '{"text": "Thanks!", "type": "user", "timestamp": 1790000028.0}');
INSERT INTO bot_events (seq, sender, type, body) VALUES (13, 'alice', 'bot', '{"text": "You''re welcome.", "type": "bot", "buttons": [{"title": "More", "payload": "more"}], "timestamp": 1790000035.0}');
SELECT setval(pg_get_serial_sequence('bot_events', 'seq'), (SELECT max(seq) FROM bot_events));
