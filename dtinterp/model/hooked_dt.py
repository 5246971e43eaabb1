"""The hooked decision transformer.

A TransformerLens ``HookedRootModule`` with TL's hook names and weight attributes, so TL's
``ActivationCache`` (``decompose_resid``, ``stack_head_results``, ``get_full_resid_decomposition``,
``logit_attrs``, ...), ``run_with_hooks``, ``FactoredMatrix`` and ``transformer_lens.patching`` work on it
unchanged.

Tokens are ``R1, S1, A1, ..., RK, SK``. The residual stream starts as
``hook_embed`` (the token's own embedding: RTG, state or action) ``+ hook_pos_embed`` (the embedding of
the token's episode timestep). Action logits are read at each state token:
``ln_final(resid_post[:, S_k]) @ W_U + b_U``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from dtinterp.model.components import TransformerBlock, make_norm
from dtinterp.model.config import DTConfig
from dtinterp.model.embeddings import CNNStateEmbedding, GridStateEmbedding
from dtinterp.model.inputs import DTInputs
from envs.encoding import ACTION_NAMES


class HookedDecisionTransformer(HookedRootModule):
    """Decision transformer over MiniGrid observations, hookable like a TransformerLens model."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        # Token embeddings, one module per input kind.
        self.W_rtg = nn.Parameter(torch.empty(d))
        self.b_rtg = nn.Parameter(torch.zeros(d))
        self.state_embed = GridStateEmbedding(cfg) if cfg.state_encoder == "grid" else CNNStateEmbedding(cfg)
        self.action_embed = nn.Embedding(cfg.n_actions + 1, d)  # last row: padding action
        self.time_embed = nn.Embedding(cfg.max_timestep, d)
        self.hook_rtg_embed = HookPoint()  # [B, K, d]
        self.hook_state_embed = HookPoint()  # [B, K, d]
        self.hook_action_embed = HookPoint()  # [B, K-1, d]
        self.hook_time_embed = HookPoint()  # [B, K, d]
        self.hook_embed = HookPoint()  # [B, P, d]   token embeddings, interleaved
        self.hook_pos_embed = HookPoint()  # [B, P, d]  time embedding of each token's timestep
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = make_norm(cfg, final=True)
        self.W_U = nn.Parameter(torch.empty(d, cfg.n_actions))
        self.b_U = nn.Parameter(torch.zeros(cfg.n_actions))
        self._init_weights()
        self.setup()
        self.to(cfg.device)

    def _init_weights(self) -> None:
        """Matrices and the RTG direction ~ N(0, init_range); biases 0; LayerNorm weights 1."""
        for name, p in self.named_parameters():
            if p.dim() > 1 or name == "W_rtg":
                nn.init.normal_(p, std=self.cfg.init_range)

    # ----------------------------------------------------------------- forward

    @property
    def pad_action(self) -> int:
        """Action id used at padded (and unknown) action positions."""
        return self.cfg.n_actions

    def embed(self, inputs: DTInputs) -> tuple[Float[Tensor, "B P d"], Bool[Tensor, "B 1 P P"]]:
        """Initial residual stream and the attention mask for ``inputs``."""
        B, K = inputs.rtg.shape
        P = 3 * K - 1
        rtg = self.hook_rtg_embed(inputs.rtg[..., None].to(self.W_rtg.dtype) * self.W_rtg + self.b_rtg)
        state = self.hook_state_embed(self.state_embed(inputs.obs, inputs.directions))
        action = self.hook_action_embed(self.action_embed(inputs.actions[:, :-1].long()))
        timesteps = inputs.timesteps.long().clamp(0, self.cfg.max_timestep - 1)
        time = self.hook_time_embed(self.time_embed(timesteps))  # [B, K, d]

        tokens = torch.stack([rtg, state, F.pad(action, (0, 0, 0, 1))], 2).reshape(B, 3 * K, -1)[:, :P]
        embed = self.hook_embed(tokens)
        pos_embed = self.hook_pos_embed(time.repeat_interleave(3, dim=1)[:, :P])
        token_real = inputs.pad_mask.repeat_interleave(3, dim=1)[:, :P]  # [B, P]
        causal = torch.ones(P, P, dtype=torch.bool, device=embed.device).tril()
        allowed = causal & (token_real[:, None, :] | torch.eye(P, dtype=torch.bool, device=embed.device))
        return embed + pos_embed, allowed[:, None]

    def forward(self, inputs: DTInputs, return_type: str = "logits") -> Tensor:
        """Action logits ``[B, K, n_actions]`` at the state tokens (``return_type="logits"``), or the
        final residual stream ``[B, P, d_model]`` (``return_type="resid"``)."""
        resid, allowed = self.embed(inputs)
        for block in self.blocks:
            resid = block(resid, allowed)
        if return_type == "resid":
            return resid
        if return_type != "logits":
            raise ValueError(f"unknown return_type {return_type!r}")
        normed = self.ln_final(resid)  # all positions, so ln_final.hook_scale covers every token
        return normed[:, 1::3] @ self.W_U + self.b_U

    # ------------------------------------------------- TransformerLens surface

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, "d"]:
        """Sum of the attention and MLP output biases added to the residual stream before ``layer``."""
        acc = torch.zeros(self.cfg.d_model, device=self.W_U.device)
        for l in range(layer):
            acc = acc + self.blocks[l].attn.b_O
            if include_mlp_biases and not self.cfg.attn_only:
                acc = acc + self.blocks[l].mlp.b_out
        if mlp_input:
            acc = acc + self.blocks[layer].attn.b_O
        return acc

    def to_single_token(self, action: str) -> int:
        """Action name (``"forward"``) -> action id: TL's name for looking up an output token."""
        if action not in ACTION_NAMES[: self.cfg.n_actions]:
            raise ValueError(f"unknown action {action!r}; expected one of {ACTION_NAMES}")
        return ACTION_NAMES.index(action)

    def tokens_to_residual_directions(
        self, actions: int | str | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d"]:
        """Unembedding direction(s) of action id(s): ``W_U[:, a]`` with d_model last."""
        if isinstance(actions, str):
            actions = self.to_single_token(actions)
        if isinstance(actions, int) or (isinstance(actions, Tensor) and actions.numel() == 1):
            return self.W_U[:, int(actions)]
        return self.W_U[:, actions].movedim(0, -1)

    def _stack(self, name: str) -> Tensor:
        return torch.stack([getattr(b.attn, name) for b in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "L H d dh"]:
        return self._stack("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "L H d dh"]:
        return self._stack("W_K")

    @property
    def W_V(self) -> Float[Tensor, "L H d dh"]:
        return self._stack("W_V")

    @property
    def W_O(self) -> Float[Tensor, "L H dh d"]:
        return self._stack("W_O")

    @property
    def QK(self) -> FactoredMatrix:
        """Per layer and head, the bilinear form ``W_Q W_K^T`` [L, H, d, d] as a FactoredMatrix."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Per layer and head, ``W_V W_O`` [L, H, d, d] as a FactoredMatrix."""
        return FactoredMatrix(self.W_V, self.W_O)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
