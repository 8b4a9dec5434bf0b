"""Every long-lived object of one gateway process, built once from the settings, complete: each gets
what it needs in its constructor, nothing is attached afterwards, and nothing connects until `start`.
gateway/app.py puts them on `app.state` and runs `start` and `stop` in the app's lifespan."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from gateway.access.admission import Admission
from gateway.access.authenticate import Authenticator
from gateway.access.bounds import RequestBounds
from gateway.access.budget_use import BudgetWatch
from gateway.access.cache import ResponseCache
from gateway.access.charges import Charges
from gateway.access.cost import PriceTable
from gateway.access.jwt import JwksCache, JwtVerifier, jwt_from_settings
from gateway.access.key_lookup import CachedKeyLookup
from gateway.access.keys import KeyStore, MemoryKeyStore, RedisKeyStore, pepper_of
from gateway.access.limits import AnonymousLimiter, KeyRateLimiter
from gateway.access.sessions import SessionStore
from gateway.access.tokens import TokenIssuer
from gateway.access.usage import UsageStore
from gateway.adapters.leases import AdapterLeases
from gateway.adapters.registry import AdapterRegistry
from gateway.model_routes.guard import Guardian
from gateway.model_routes.ratings import Ratings
from gateway.model_routes.stats import RouteStats
from gateway.model_routes.store import RouteStore
from gateway.model_routes.table import RouteTable
from gateway.model_routes.targeting import Targeting
from gateway.observability.access_log import RecentRequests
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import exporter_from_env, setup_tracing
from gateway.pipeline.capture import Capture
from gateway.pipeline.feedback import FeedbackDesk
from gateway.pipeline.inference import InferencePipeline
from gateway.pipeline.review import ReviewQueue
from gateway.pipeline.shadow import ShadowMirror
from gateway.pipeline.verdicts import Verdicts
from gateway.replicas.build import build_pool
from gateway.replicas.call import ReplicaCaller
from gateway.settings import Settings
from gateway.state.redis import RedisState
from gateway.state.write_behind import WriteBehind
from gateway.store.runtime import StoreRuntime


class Services:
    def __init__(self, settings: Settings, *, span_exporter: SpanExporter | None = None) -> None:
        """`span_exporter` turns tracing on (tests pass an in-memory one); else OTEL_EXPORTER_OTLP_ENDPOINT does."""
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(
            self.registry,
            gpu_monthly_usd=settings.gpu_monthly_usd,
            budget_warning=settings.budget_warning_ratio,
            budget_critical=settings.budget_critical_ratio,
        )
        self.failures = FailureLog(self.metrics)
        self.tracing = setup_tracing(exporter=span_exporter or exporter_from_env())
        self.redis = RedisState.from_url(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            retry_after_s=settings.redis_retry_s,
            on_error=lambda op: self.metrics.redis_errors.labels(op).inc(),
        )
        self._access()
        self._replicas()
        self._routes()
        self._pipelines()

    def _access(self) -> None:
        """Who is calling and what they may spend."""
        settings, redis, metrics = self.settings, self.redis, self.metrics
        pepper = pepper_of(settings)
        self.keys: KeyStore = RedisKeyStore(redis, pepper) if redis.configured else MemoryKeyStore(pepper)
        self.key_lookup = CachedKeyLookup(self.keys, pepper, fresh_s=settings.key_cache_s, stale_s=settings.key_stale_s)
        jwt_config = jwt_from_settings(settings)
        self.jwks = JwksCache(jwt_config.jwks_url) if jwt_config is not None and jwt_config.jwks_url else None
        self.authenticator = Authenticator(
            keys=self.key_lookup,
            jwt=JwtVerifier(jwt_config, self.jwks) if jwt_config else None,
            admin_key=settings.admin_key.get_secret_value() if settings.admin_key else None,
            open_locally=settings.auth == "none",
            default_rpm=settings.jwt_default_rpm,
            default_tpm=settings.jwt_default_tpm,
            tracer=self.tracing.tracer,
        )
        self.tokens = TokenIssuer(
            config=jwt_config,
            authenticator=self.authenticator,
            limiter=AnonymousLimiter(settings.anonymous_rpm, redis),
        )
        self.limiter = KeyRateLimiter(
            redis,
            on_limited=lambda kind: metrics.rate_limited.labels(kind).inc(),
            on_drop=metrics.dropped_writes.labels("limits").inc,
        )
        self.budgets = BudgetWatch(
            self.keys,
            self.limiter,
            metrics,
            self.failures,
            interval_s=settings.budget_metric_interval_s,
            max_keys=settings.budget_metric_max_keys,
        )
        self.cache = ResponseCache(redis, ttl_s=settings.cache_ttl_s, max_entry_bytes=settings.cache_max_entry_bytes)
        self.usage = UsageStore(redis, on_drop=metrics.dropped_writes.labels("usage").inc)
        self.prices = PriceTable(
            default=settings.price_default, models=dict(settings.prices), gpu_monthly_usd=settings.gpu_monthly_usd
        )

    def _replicas(self) -> None:
        """The replicas, with their adapters, and the step that calls them."""
        self.adapters = AdapterRegistry.for_redis(self.redis)
        # Requests on each adapter version across every gateway process: a version is unloaded once drained.
        leases = AdapterLeases(self.redis, lease_s=self.settings.total_timeout_s + 60)
        self.pool = build_pool(
            self.settings,
            self.metrics,
            failures=self.failures,
            registry=self.adapters,
            leases=leases,
            tracer=self.tracing.tracer if self.tracing.enabled else None,
        )
        self.caller = ReplicaCaller(pool=self.pool, settings=self.settings, tracer=self.tracing.tracer)

    def _routes(self) -> None:
        """Model routes: the shared store, this process's table of them, their signals and their guard."""
        metrics = self.metrics
        self.route_store = RouteStore(self.redis)
        self.route_table = RouteTable(self.route_store, failures=self.failures, on_reload=metrics.show_route_weights)
        self.route_stats = RouteStats(self.redis, metrics)
        self.guardian = Guardian(
            table=self.route_table,
            store=self.route_store,
            stats=self.route_stats,
            failures=self.failures,
            on_rollback=lambda route, reason: metrics.rollbacks.labels(route, reason).inc(),
        )

    def _pipelines(self) -> None:
        """The inference log, and the two paths a request takes: inference and feedback."""
        settings, metrics, failures = self.settings, self.metrics, self.failures
        self.store = StoreRuntime(settings, metrics, failures)
        self.writes = WriteBehind(self.redis, [self.limiter, self.usage, self.cache, self.route_stats])
        self.verdicts = verdicts = Verdicts(on_unjudged=lambda why: metrics.format_unjudged.labels(why).inc())
        self.shadow = ShadowMirror(
            caller=self.caller, metrics=metrics, failures=failures, verdicts=verdicts, capacity=settings.shadow_queue
        )
        self.recent = RecentRequests()
        self.pipeline = InferencePipeline(
            authenticator=self.authenticator,
            bounds=RequestBounds(settings),
            targeting=Targeting(table=self.route_table, pool=self.pool),
            admission=Admission(
                limiter=self.limiter,
                cache=self.cache,
                metrics=metrics,
                cache_enabled=settings.cache_enabled,
                default_max_tokens=settings.default_max_tokens_estimate,
                cache_scope=settings.cache_scope,
                tracer=self.tracing.tracer,
            ),
            caller=self.caller,
            charges=Charges(
                limiter=self.limiter,
                usage=self.usage,
                cache=self.cache,
                prices=self.prices,
                metrics=metrics,
                versions=self.pool.version,
            ),
            route_stats=self.route_stats,
            capture=Capture(
                self.store.writer,
                failures=failures,
                percent=settings.capture_percent,
                key_percent=settings.capture_keys,
            ),
            writes=self.writes,
            shadow=self.shadow,
            verdicts=verdicts,
            metrics=metrics,
            failures=failures,
        )
        self.review = ReviewQueue(self.store.engine, self.redis)
        self.sessions = SessionStore(self.redis, lifetime_s=self.settings.console_session_hours * 3600)
        self.feedback = FeedbackDesk(
            recent=self.recent,
            engine=self.store.engine,
            pool=self.pool,
            ratings=Ratings(self.redis, self.route_stats),
            limiter=self.limiter,
            metrics=metrics,
            failures=failures,
        )

    async def start(self) -> None:
        await self.pool.start()
        await self.store.start()
        await self.route_table.start()
        self.guardian.start()
        self.shadow.start()
        await self.budgets.start()
        for model in self.pool.models():  # cache and cost series exist before the first request
            self.metrics.register_model(model)

    async def stop(self) -> None:
        await self.shadow.aclose()
        await self.budgets.aclose()
        await self.guardian.aclose()
        await self.route_table.aclose()
        await self.pool.aclose()
        await self.writes.flush()
        self.verdicts.close()
        await self.redis.close()
        if self.jwks is not None:
            await self.jwks.aclose()
        await self.store.aclose()
        self.tracing.shutdown()
