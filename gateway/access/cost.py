"""What the served traffic would have cost on a hosted API, and when the GPU box pays off.

Prices are per million tokens, as hosted APIs publish them. The break-even volume is the
standard cost analysis: monthly GPU cost / API cost per query = the number of queries a month
above which self-hosting is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.settings.access import DEFAULT_PRICE, ModelPrice


@dataclass(frozen=True)
class PriceTable:
    default: ModelPrice = DEFAULT_PRICE
    models: dict[str, ModelPrice] = field(default_factory=dict)
    gpu_monthly_usd: float = 0.0

    def price_for(self, model: str) -> ModelPrice:
        return self.models.get(model, self.default)

    def hosted_cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        price = self.price_for(model)
        return (input_tokens * price.input_per_million + output_tokens * price.output_per_million) / 1_000_000

    def break_even(self, total_cost_usd: float, requests: int) -> dict[str, float | None]:
        """API cost per query over this traffic, and the monthly query volume where the GPU pays off."""
        per_query = total_cost_usd / requests if requests else None
        volume = self.gpu_monthly_usd / per_query if per_query else None
        return {
            "api_cost_per_query_usd": per_query,
            "gpu_monthly_usd": self.gpu_monthly_usd,
            "break_even_queries_per_month": volume,
        }
