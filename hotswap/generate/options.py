"""The `generation:` section of a model config: present = the model generates text.

    models:
      - name: smollm2-chat
        source: builtin:smollm2            # or a local causal-LM folder (config.json, safetensors, tokenizer)
        backends: [{name: torch, device: cuda:0}, {name: torch, device: cpu}]
        generation: {max_sequences: 16, max_kv_tokens: 32768}

Every knob has an upper bound: a config (or a load request) cannot ask for unbounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The one backend with a decode loop; other chain entries are skipped with this reason.
GENERATION_BACKEND = "torch"


class GenerationConfig(BaseModel):
    """Text generation with continuous batching (hotswap.generate): limits and defaults."""

    model_config = ConfigDict(extra="forbid")

    max_sequences: int = Field(16, ge=1, le=256, description="Sequences decoded together at most (the running "
                               "batch); more wait for a slot.")
    max_waiting: int = Field(64, ge=0, le=4096, description="Requests waiting for a slot at most; more are "
                             "answered 503 with Retry-After.")
    max_kv_tokens: int = Field(32_768, ge=64, le=2**22, description="KV-cache token slots of the padded batch "
                               "(sequences x longest sequence); a sequence is admitted only if the batch, with "
                               "every sequence run to its max_tokens, stays within it.")
    max_prompt_tokens: int = Field(4096, ge=1, le=2**20, description="Longest prompt in tokens (after the chat "
                                   "template); longer ones are refused with 400.")
    max_tokens_default: int = Field(256, ge=1, le=2**20, description="Tokens generated when a request does not "
                                    "say (max_tokens / max_completion_tokens).")
    max_tokens_limit: int = Field(2048, ge=1, le=2**20, description="Most tokens one request may ask for; more "
                                  "is refused with 400.")
    prefill_chunk_tokens: int = Field(256, ge=16, le=65_536, description="Prompt tokens prefilled per engine "
                                      "step, in the same forward as the running batch's decode: new prompts are "
                                      "prefilled together up to this budget and a longer prompt in chunks of it, "
                                      "so running streams keep getting tokens while a long prompt is read.")
    join_wait_ms: float = Field(20.0, ge=0, le=1000, description="After a step in which sequences finished, "
                                "with nobody waiting, the next step waits up to this long (and at most a tenth "
                                "of the last step) for new requests to join its forward: a client that sends "
                                "its next request as soon as one ends gets its first token a whole step sooner. "
                                "0: never wait.")
    prefix_cache: bool = Field(True, description="Keep the keys and values of the prompt prefix requests "
                               "share (a chat template's system block) and prefill only the rest of each "
                               "prompt.")
    max_stop: int = Field(8, ge=0, le=64, description="Most stop strings one request may give.")

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> GenerationConfig:
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("max_tokens_default must not exceed max_tokens_limit")
        return self


def generation_chain_problem(backends: list[str], has_io: bool, has_processor: bool,
                             has_resilience: bool) -> str | None:
    """Why a model config cannot generate, or None: called by ModelConfig's validator."""
    if GENERATION_BACKEND not in backends:
        others = ", ".join(sorted(set(backends)))
        return (f"generation runs only on the torch backend (its own decode loop with a KV cache); the chain "
                f"names {others}, which serve fixed graphs only: add a {{name: torch, device: ...}} entry")
    if has_io or has_processor:
        return "a generation model takes no `inputs`, `outputs` or `processor`: its tokenizer comes from its folder"
    if has_resilience:
        return "`failover` and `shadow` are not supported for generation models yet"
    return None


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the decode loop (validated by the protocol adapters)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
