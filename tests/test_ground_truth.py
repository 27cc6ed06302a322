"""Ground truth: on prompts of the generated corpus, the traced graph of the shipped default
model contains the mechanism the corpus plants.

For each prompt the *predicting head* is the Lorsa head with the largest direct edge into the
target logit. It must attend to the expected key, and its QK attribution must pair the expected
query-side and key-side nodes. A node's *origin* is its strongest direct input (an embedding
is its own origin): it says what a feature or head at a position is carrying.
"""

import numpy as np
import pytest
import torch

from circuits.attribution import PromptRun, attribute, run_prompt
from circuits.graph import Graph
from circuits.qk import qk_attribution
from toy_models.tokenizer import encode_prompt


@pytest.fixture(scope="module")
def default():
    from replacement.model import load_pretrained

    with torch.no_grad():
        yield load_pretrained("default")


class Traced:
    """A prompt traced on the default model, with helpers to read the mechanism off it."""

    def __init__(self, default, text: str):
        replacement, tokenizer = default
        self.replacement, self.tokenizer = replacement, tokenizer
        tokens = encode_prompt(tokenizer, text, replacement.cfg.n_ctx)
        self.graph: Graph = attribute(replacement, tokens, tokenizer=tokenizer, prompt=text)
        self.run: PromptRun = run_prompt(replacement, torch.tensor(tokens), "local")
        self.index = self.graph.id_to_index
        self.q = len(tokens) - 1

    def top_logit(self) -> str:
        logit = int(self.graph.is_kind("logit").nonzero()[0])
        return self.tokenizer.decode([int(self.graph.index[logit])])

    def predicting_head(self) -> int:
        g = self.graph
        logit = int(g.is_kind("logit").nonzero()[0])
        row = g.edges[[logit]].toarray()[0]
        heads = g.is_kind("lorsa").numpy()
        return int(np.flatnonzero(heads)[np.argmax(row[heads])])

    def strongest_key(self, node: int) -> int:
        g = self.graph
        layer, q = int(g.layer[node]), int(g.pos[node])
        h = int(g.index[node]) // self.replacement.lorsas[layer].cfg.group_size
        return int(self.run.patterns[layer][h, q, : q + 1].argmax())

    def origin(self, node_id: str) -> int:
        i = self.index[node_id]
        if self.graph.kinds[i] == "embedding":
            return i
        return int(np.abs(self.graph.edges[[i]].toarray()[0]).argmax())

    def is_embedding_at(self, node: int, pos: int) -> bool:
        return self.graph.kinds[node] == "embedding" and int(self.graph.pos[node]) == pos

    def carries_previous_token(self, node_id: str, k: int) -> bool:
        """The node, or its origin, is a head at k reading the token before k."""
        g = self.graph
        return any(
            g.kinds[i] == "lorsa" and int(g.pos[i]) == k and self.strongest_key(i) == k - 1
            for i in (self.index[node_id], self.origin(node_id))
        )

    def node_pairs(self, head: int, n: int = 3):
        """The head's top query-node x key-node terms (bias terms left out), largest first."""
        (record,) = qk_attribution(self.replacement, self.graph, [head], top=40)
        return record, [p for p in record.pairs if p.query and p.key][:n]


def test_induction_on_a_repeated_random_segment(default):
    t = Traced(default, " wind harbor bear kite moon river | wind harbor bear kite moon")
    assert t.top_logit() == " river"
    head = t.predicting_head()
    assert t.graph.layer[head] >= 1
    first_moon, q = 5, t.q
    assert t.strongest_key(head) == first_moon + 1  # the token after the earlier " moon"
    record, pairs = t.node_pairs(head)
    assert record.attention > 0.9
    # Query: the current token; key: a previous-token head that copied " moon" forward.
    assert any(
        t.is_embedding_at(t.origin(p.query), q) and t.carries_previous_token(p.key, first_moon + 1)
        for p in pairs
    )
    # Against the mean key (dense features cancel), the top query-node x key-unit term is
    # that same pair: the current token x what the previous-token head wrote at the key.
    (record,) = qk_attribution(t.replacement, t.graph, [head], top=40, contrast=True)
    top = next(p for p in record.contrast_pairs if p.query is not None and p.key != "bias")
    assert t.is_embedding_at(t.origin(top.query), q)
    assert t.carries_previous_token(f"{top.key}_{first_moon + 1}", first_moon + 1)


def test_successor_on_a_weekday_sequence(default):
    t = Traced(default, "Monday, Tuesday, Wednesday,")
    assert t.top_logit() == " Thursday"
    head = t.predicting_head()
    wednesday = 5
    assert t.strongest_key(head) == wednesday
    _, pairs = t.node_pairs(head)
    top = pairs[0]
    assert t.is_embedding_at(t.origin(top.query), t.q)  # the "," asking for the next item
    assert t.is_embedding_at(t.origin(top.key), wednesday)


@pytest.mark.parametrize(
    "text, answer, operand_digit",
    [
        ("12+35=47\n347+285=", "6", 10),  # first answer digit: fetch the hundreds digit "3"
        ("347+285=6", "3", 2),  # second answer digit: fetch the tens digit "4"
    ],
)
def test_operand_fetching_in_addition(default, text, answer, operand_digit):
    t = Traced(default, text)
    assert t.top_logit() == answer
    head = t.predicting_head()
    assert t.strongest_key(head) == operand_digit
    _, pairs = t.node_pairs(head)
    top = pairs[0]
    assert t.is_embedding_at(t.origin(top.query), t.q)
    key = t.origin(top.key)
    # The key side carries the operand digit: its embedding, or a head reading that digit.
    assert t.is_embedding_at(key, operand_digit) or (
        t.graph.kinds[key] == "lorsa" and t.strongest_key(key) == operand_digit
    )


def test_subtoken_induction_on_a_held_out_rare_name(default):
    """A held-out name of the corpus split into sub-tokens ' Sh uc lou m': at its second
    mention the model copies the sub-token that followed ' Sh' before."""
    text = '"Hello, Shucloum!" said Greakrol at the village. "Look at this key," Greakrol told Sh'
    t = Traced(default, text)
    assert t.top_logit() == "uc"
    head = t.predicting_head()
    first_sh = 4
    assert t.strongest_key(head) == first_sh + 1
    _, pairs = t.node_pairs(head)
    assert any(
        t.is_embedding_at(t.origin(p.query), t.q) and t.carries_previous_token(p.key, first_sh + 1)
        for p in pairs
    )
