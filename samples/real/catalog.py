"""A cache-aside service instrumented only with stock OpenTelemetry Python
packages (Flask, redis-py, psycopg2 instrumentations; the SDK's OTLP/HTTP
exporter), run against real Redis and PostgreSQL servers, then driven into a
hot-key stampede: nothing here knows what Herdwatch looks for.

    python catalog.py --redis-port 6379 --pg-dsn "dbname=shop" \
        --otlp http://127.0.0.1:4318 --capture out.pb --seconds 60

Phases (wall clock, from the start of load):
- 0 s: `home:featured` (the home page's expensive aggregate, `--hot-share`
  of the traffic) and products 2..200 are cached; the home page with a TTL
  of `--expire-at` seconds, the products for an hour. `--cold-share` of
  requests ask for uncached products (cheap primary-key reads: an ordinary
  miss rate).
- expire-at: `home:featured` expires; every request for it misses at once
  and recomputes the aggregate in PostgreSQL through a pool of 8
  connections, which saturates.
Prints the ground truth (expiry time in Unix nanoseconds, hot key) as JSON.
"""

import argparse
import json
import random
import struct
import threading
import time
import urllib.request

import psycopg2
import psycopg2.pool
import redis
from flask import Flask, jsonify
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class CaptureExporter(SpanExporter):
    """Length-delimited ExportTraceServiceRequest messages, as the stock
    OTLP encoder makes them (what `herdwatch analyze` reads)."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.lock = threading.Lock()

    def export(self, spans):
        data = encode_spans(spans).SerializeToString()
        n, prefix = len(data), b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                prefix += struct.pack("B", b | 0x80)
            else:
                prefix += struct.pack("B", b)
                break
        with self.lock:
            self.f.write(prefix + data)
            self.f.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.f.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument("--pg-dsn", default="dbname=shop")
    ap.add_argument("--otlp", help="OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318")
    ap.add_argument("--capture", help="also write the spans here (length-delimited protobuf)")
    ap.add_argument("--app-port", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=50)
    ap.add_argument("--expire-at", type=float, default=25)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--hot-share", type=float, default=0.5)
    ap.add_argument("--cold-share", type=float, default=0.03)
    ap.add_argument("--query-rows", type=int, default=1500000, help="work of the home page's query")
    args = ap.parse_args()
    random.seed(args.seed)

    resource = Resource.create({"service.name": "catalog", "service.version": "1.4.2"})
    provider = TracerProvider(resource=resource)
    if args.otlp:
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=args.otlp + "/v1/traces"))
        )
    if args.capture:
        provider.add_span_processor(BatchSpanProcessor(CaptureExporter(args.capture)))
    trace.set_tracer_provider(provider)
    if args.otlp:
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=args.otlp + "/v1/metrics"), export_interval_millis=5000
        )
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))

    RedisInstrumentor().instrument()
    Psycopg2Instrumentor().instrument()

    setup = psycopg2.connect(args.pg_dsn)
    setup.autocommit = True
    with setup.cursor() as c:
        c.execute("CREATE TABLE IF NOT EXISTS products (id int primary key, name text, price int)")
        c.execute(
            "INSERT INTO products SELECT g, 'product ' || g, g % 97 FROM generate_series(1, 100000) g "
            "ON CONFLICT DO NOTHING"
        )
    setup.close()

    pool = psycopg2.pool.ThreadedConnectionPool(1, 64, args.pg_dsn)
    gate = threading.BoundedSemaphore(8)  # the pool limit the service runs with
    cache = redis.Redis(port=args.redis_port)

    app = Flask("catalog")
    FlaskInstrumentor().instrument_app(app)

    def cached(key, query, params, ttl):
        """Cache-aside: the lookup, on a miss the query through the pool,
        then the fill."""
        hit = cache.get(key)
        if hit is not None:
            return json.loads(hit)
        with gate:
            conn = pool.getconn()
            try:
                with conn.cursor() as c:
                    c.execute(query, params)
                    row = c.fetchone()
                conn.commit()
            finally:
                pool.putconn(conn)
        value = [str(v) for v in row]
        cache.set(key, json.dumps(value), ex=ttl)
        return value

    @app.route("/product/<int:pid>")
    def product(pid):
        return jsonify(
            cached(
                f"product:{pid}",
                "SELECT id, name, price FROM products WHERE id = %s",
                (pid,),
                3600,
            )
        )

    @app.route("/home")
    def home():
        # The expensive page: a scan-and-aggregate, cached as one hot key.
        return jsonify(
            cached(
                "home:featured",
                "SELECT count(*), sum(g %% 97) FROM generate_series(1, %s) g",
                (args.query_rows,),
                3600,
            )
        )

    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    server = make_server("127.0.0.1", args.app_port, app, threaded=True)
    port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()

    # Warm the cache outside any trace: the hot key expires at expire-at.
    with suppress_instrumentation():
        cache.flushdb()
        start = time.time()
        for pid in range(2, 201):
            value = json.dumps({"id": pid, "name": f"product {pid}", "price": pid % 97})
            cache.set(f"product:{pid}", value, ex=3600)
        cache.set("home:featured", json.dumps(["1", "2"]), px=int(args.expire_at * 1000))
    expire_ns = int((start + args.expire_at) * 1e9)

    stop = start + args.seconds

    def client(n):
        rng = random.Random(args.seed * 1000 + n)
        while time.time() < stop:
            r = rng.random()
            if r < args.hot_share:
                path = "/home"
            elif r < 1 - args.cold_share:
                path = f"/product/{rng.randint(2, 200)}"
            else:
                path = f"/product/{rng.randint(1000, 100000)}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read()
            except Exception as e:  # noqa: BLE001 - a load generator keeps going
                print("request failed:", e)
            time.sleep(rng.uniform(0.02, 0.06))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.shutdown()
    provider.shutdown()
    if args.otlp:
        metrics.get_meter_provider().shutdown()
    print(json.dumps({"hot_key": "home:featured", "path": "/home", "expired_unix_nano": expire_ns,
                      "service": "catalog"}))


if __name__ == "__main__":
    main()
