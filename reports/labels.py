"""Readable labels of graph nodes, made from the Graph's fields (never parsed back).

``node_label`` is the full one-line description (tables, tooltips, the JSON ``clerp``);
``short_label`` the at-most-two-line text drawn inside a node. Both read the structured
per-node facts: the key a head reads (``attends``), the tokens a head or feature promotes
(``promotes``), the resolved logit targets (``logit_targets``), and for global graphs the
units' firing counts (``occurrences``).
"""

from __future__ import annotations

from circuits.concepts import DOCUMENT_CONCEPTS
from circuits.graph import Graph, checked_graph, probability_words
from circuits.groups import spread_note, spread_percent
from circuits.nodes import EMBEDDING_STAGE, Kind, block_of, is_attention, logit_stage, node_words

MAX_LABEL_CHARS = 48  # longer text is cut in the drawing; the tooltip keeps all of it
LINE_CHARS = 14  # a node label is at most two lines of about this many characters
LOGIT_CHARS = 18  # logits are few and say which tokens: their lines may be a little longer


PROMOTES = "↑"  # before the token a feature's box names: the one its decoder promotes most


def shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit(text: str, limit: int = LINE_CHARS) -> str:
    return shorten(text, max(limit, 2))


def at_position(token: str, pos: int, limit: int = LINE_CHARS) -> str:
    """``'tok'@pos`` in at most ``limit`` characters, cutting the token, never the pos."""
    suffix = f"@{pos}"
    return _fit(token, limit - len(suffix)) + suffix


def prompt_token(graph: Graph, pos: int) -> str:
    return repr(graph.token_strings[pos]) if 0 <= pos < len(graph.token_strings) else f"<@{pos}>"


def promoted(graph: Graph, i: int) -> list[str]:
    """The tokens node ``i`` promotes most, quoted."""
    return [repr(graph.token(t)) for t in graph.promotes[i].tolist() if t >= 0]


def logit_text(graph: Graph, i: int, both: bool = False) -> tuple[str, str]:
    """A logit node's (tokens, value) texts: ``("' Julia'", "p=0.997")`` or
    ``("' Mary' - ' Tom'", "= 2.554")``; in sparse mode the probability is the replacement's,
    with the model's beside it (``"p=0.753 (model 0.200)"``). With ``both``, a difference's
    value is followed by its two tokens' probabilities where the record has them (``"= 2.554
    (p 0.997, 0.001)"``, sparse: ``"(p 0.151, 0.141; model 0.137, 0.024)"``): a review found
    the page's node giving none, where the summary and graph.json give both."""
    record = graph.logit_record(i)
    if record.negative is None:
        p, model = _probability_texts(record)
        return repr(graph.token(record.token)), p if model is None else f"{p} {model}"
    pair = f"{graph.token(record.token)!r} - {graph.token(record.negative)!r}"
    value = f"= {float(graph.value[i]):.3f}"
    if both and record.negative_probability is not None:
        pairs = [
            ("p", record.probability, record.negative_probability),
            ("model", record.model_probability, record.model_negative_probability),
        ]
        said = "; ".join(f"{what} {probability_words(a)}, {probability_words(b)}"
                         for what, a, b in pairs if a is not None and b is not None)  # fmt: skip
        value += f" ({said})"
    return pair, value


def _probability_texts(record) -> tuple[str, str | None]:
    """A one-token logit record's probability text and, in sparse mode, the model's beside it
    (``("p=0.753", "(model 0.200)")``; None in local mode)."""
    theirs = record.model_probability
    model = None if theirs is None else f"(model {probability_words(theirs)})"
    return f"p={probability_words(record.probability)}", model


def _usage(graph: Graph, i: int) -> str:
    if graph.occurrences is None:
        return ""
    return f" ({float(graph.occurrences[i]):.0f}x, mean {float(graph.activation[i]):.2f})"


def fields_label(graph: Graph, kind: Kind, stage: int, index: int, pos: int | None) -> str:
    """The label of a node from its fields alone (``pos`` None: a unit), in
    ``circuits.nodes.node_words``'s wording: a token by its text (at ``pos`` the prompt's, when
    the prompt holds it there), a constant said to be one, a head with its QK group. What only
    a held node has (the key it reads, the tokens it promotes) ``node_label`` adds; the viewer
    labels the nodes a QK record names and pruning dropped with this alone."""
    kind = Kind(kind)
    where = pos if graph.positional else None
    if kind == Kind.EMBEDDING:
        if where is not None:
            prompt = 0 <= where < len(graph.tokens) and graph.tokens[where] == index
            text = graph.token_strings[where] if prompt else graph.token(index)
            return f"{text!r}@{where}"
        return node_words(kind, stage, index, token=graph.token_text.get(index))
    text = node_words(kind, stage, index, where)
    if kind == Kind.BIAS:
        return f"{text} (constant)"
    if kind == Kind.LORSA:
        return f"{text} (QK {index // graph.group_size})"
    return text


def node_label(graph: Graph, i: int) -> str:
    """One readable line: token, head with its QK group and the key it reads, feature with the
    tokens its decoder promotes most, error, constant, logit with its probability or value."""
    i = graph.node_index(i)
    kind = Kind(int(graph.kind[i]))
    stage, pos, index = int(graph.stage[i]), int(graph.pos[i]), int(graph.index[i])
    if kind == Kind.LOGIT:
        tokens, value = logit_text(graph, i, both=True)
        return f"logit {tokens} {value}" if graph.positional else f"logit {tokens}"
    if kind == Kind.EMBEDDING and graph.positional:
        return f"{prompt_token(graph, pos)}@{pos}"
    text = fields_label(graph, kind, stage, index, pos)
    if kind == Kind.LORSA:
        key = graph.read_key(i)
        if key is not None:
            text += f" reads {prompt_token(graph, key)}@{key}{spread_note(graph.read_share(i))}"
    if kind == Kind.TRANSCODER:
        tokens = promoted(graph, i)
        text += f" -> {' '.join(tokens)}" if tokens else ""
    return text + _usage(graph, i)


def concept_text(concept) -> str:
    """A unit's concept label for people (a dashboard's ``concept``: label, F1, chance F1):
    ``addition: '=', F1 0.70``; a label whose F1 is what the unit's firing rate alone would
    give (``circuits.concepts.at_chance``) is no concept, and says so first: ``none (at
    chance: family: addition, F1 0.45 vs 0.43)`` (a reviewer read "[concept: family:
    addition, F1 0.36, at chance (0.28): the kind of document it fires in, not what it
    reads]" beside the top induction heads of a repeated segment: the label first, 100
    characters of which said nothing); a label above chance that is the kind of document the
    unit fires in says so (``DOCUMENT_CONCEPTS``: the mechanism summary does not name it)."""
    label, f1 = concept["label"], concept.get("f1")
    if concept.get("at_chance"):
        score = "" if f1 is None else f", F1 {f1:.2f} vs {concept['chance']:.2f}"
        return f"none (at chance: {label}{score})"
    text = label if f1 is None else f"{label}, F1 {f1:.2f}"
    if label in DOCUMENT_CONCEPTS:
        text += ": the kind of document it fires in, not what it reads"
    return text


def node_labels(graph: Graph) -> list[str]:
    return [node_label(graph, i) for i in range(checked_graph(graph).n_nodes)]


def short_label(graph: Graph, i: int) -> str:
    """The label drawn in node ``i``: ``short_label_lines`` joined by newlines."""
    return "\n".join(short_label_lines(graph, i))


def short_label_lines(graph: Graph, i: int) -> list[str]:
    """The lines drawn in node ``i``: at most two of about ``LINE_CHARS`` characters (a sparse
    logit's three where its token and p take a line: the model's probability has its own).

    Embedding ``'tok'@pos`` (global graphs: ``'tok'``); Lorsa head ``H{index}`` over
    ``→'tok'@key``, the key it reads (``Graph.read_key``: where its activation comes from
    most, as its other label and its first QK record say; ``12%→'tok'@key`` where that key
    brings under ``SPREAD_SHARE`` of it: ``spread_percent``), or over its QK group in a
    global graph; transcoder feature ``F{index}`` over the token it promotes most, marked ``↑``
    (``PROMOTES``: a reader took ``F1223 'December'`` on a weekday prompt for what the
    feature fires on); error ``err``;
    bias ``bias`` over its sublayer; logit its token(s) and probability or value.
    """
    i = graph.node_index(i)
    kind = Kind(int(graph.kind[i]))
    pos, index = int(graph.pos[i]), int(graph.index[i])
    if kind == Kind.EMBEDDING:
        if not graph.positional:
            return [_fit(repr(graph.token(index)))]
        return [at_position(prompt_token(graph, pos), pos)]
    if kind == Kind.ERROR:
        return ["err"]
    if kind == Kind.BIAS:
        stage = int(graph.stage[i])
        if stage == EMBEDDING_STAGE:
            return ["position", at_position("vector", pos)]
        return ["bias", f"L{block_of(stage)} {'attn' if is_attention(stage) else 'mlp'}"]
    if kind == Kind.LOGIT:
        tokens, value = logit_text(graph, i)
        if not graph.positional:
            return [_fit(tokens, LOGIT_CHARS)]
        text = f"{tokens} {value}"
        if len(text) <= LINE_CHARS:
            return [text]
        # sparse mode: "p=0.753 (model 0.200)" is past LOGIT_CHARS, and cut there it lost the
        # model's number (a review): its own line, the token and p on one where they fit
        record = graph.logit_record(i)
        p, model = _probability_texts(record) if record.negative is None else (value, None)
        if model is None:
            return [_fit(tokens, LOGIT_CHARS), _fit(value, LOGIT_CHARS)]
        first = f"{tokens} {p}"
        if len(first) <= LOGIT_CHARS:
            return [first, model]
        return [_fit(tokens, LOGIT_CHARS), p, model]
    if kind == Kind.LORSA:
        if not graph.positional:
            return [f"H{index}", f"QK {graph.qk_head(i)}"]
        key = graph.read_key(i)
        if key is None:
            return [f"H{index}"]
        # a key bringing under SPREAD_SHARE of the activation: its share before the arrow
        share = graph.read_share(i)
        arrow = (spread_percent(share) or "") + "→"
        return [
            f"H{index}",
            arrow + at_position(prompt_token(graph, key), key, LINE_CHARS + 1 - len(arrow)),
        ]
    tokens = promoted(graph, i)  # marked as what it writes, not what it reads or fires on
    return [f"F{index}", _fit(PROMOTES + tokens[0], LINE_CHARS + 1)] if tokens else [f"F{index}"]


def stage_name(stage: int, n_layers: int) -> str:
    """The row label of ``stage``: which sublayer of which block its nodes belong to."""
    if stage == 0:
        return "embeddings"
    if stage == logit_stage(n_layers):
        return "logits"
    block = block_of(stage)
    return f"L{block} Lorsa" if is_attention(stage) else f"L{block} transcoder"
