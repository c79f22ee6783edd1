"""Words, names and lyrics for the stand-in dataset generator (:mod:`songrec.generate`).

Everything here is a pure function of integers (word ids, artist ids, a numpy Generator), so that
any Spark task can render the name of any song without asking another task.
"""

import numpy as np

# About 88 genre tokens; index 0 must stay "hip hop" and index 1 "hip-hop" (generate_rows relies on it).
GENRES: list[str] = """
hip hop|hip-hop|pop|rap|r&b|trap|rock|indie|alternative|k-pop|j-pop|c-pop|mandopop|cantopop|indie rock|
indie pop|indie folk|metal|heavy metal|death metal|nu metal|punk|pop punk|post-punk|emo|screamo|hardcore|
grunge|hard rock|soft rock|classic rock|psychedelic|progressive rock|new wave|shoegaze|dream pop|lo-fi|
country|folk|bluegrass|americana|singer-songwriter|acoustic|jazz|blues|soul|neo soul|funk|motown|disco|
house|deep house|techno|trance|edm|dubstep|drum and bass|electronic|electropop|synthpop|ambient|garage|
classical|opera|soundtrack|reggae|reggaeton|latin|salsa|bachata|cumbia|dancehall|afrobeats|gospel|
christian|grime|drill|boom bap|g-funk|gangsta rap|conscious hip hop|underground hip hop|k-rap|world|
bossa nova|flamenco|ska|swing
""".replace("\n", "").split("|")

JUNK_EMOTIONS: list[str] = ["Love", "True", "angry", "confusion", "interest", "pink", "thirst"]
PITCHES: list[str] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
MONTHS: list[str] = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])

# Function words of lyrics, most frequent first (drawn with a Zipf-like weight).
COMMON_WORDS: list[str] = """
I you the me my to and a it in we your be love baby oh yeah don't know got all like on just can that
so for with now this when what up down go get let come feel heart night say way time never want need
see one tell make take back no more gonna wanna out is was are it's I'm you're ain't girl boy hold
keep life world right gone still ever only every same real hard long away home around through again
""".split()

# Content words shared by titles, albums, artist names and the styles' lyric vocabularies.
CONTENT_WORDS: list[str] = """
fire rain river city summer winter light shadow dream money street gold diamond midnight ocean highway
thunder whiskey honey sugar angel devil ghost heaven road train window mirror bottle party dance floor
crowd club beat bass rhythm melody guitar drum echo silence storm wind sky star moon sun desert mountain
valley forest garden rose flower blood bone stone steel glass smoke ash flame spark wave shore island
harbor ship sail anchor compass map border wire signal radio engine motor wheel chrome neon velvet silk
satin leather denim cotton lace paper ink letter promise secret lie truth faith hope grace mercy glory
pride shame fear rage wonder magic spell crown throne king queen prince hustle grind block corner hood
crew squad homie bling cash dollar check bank vault jewel ice drip flex wrist chain whip ride cruise
lane mile county town village farm field tractor barn porch creek holler mama daddy brother sister
darling lover stranger friend enemy soldier rebel outlaw cowboy sheriff preacher sinner saint prayer
church choir hymn sermon cross temple spirit soul mind body skin lips eyes hands tears smile kiss touch
breath pulse memory yesterday tomorrow forever morning evening twilight dawn dusk season autumn spring
snow frost cold warm sweet bitter wild free lonely broken golden silver electric cosmic digital plastic
crystal purple crimson blue scarlet emerald orbit rocket planet galaxy comet laser pixel circuit static
voltage machine robot android satellite vapor tide coral reef lagoon jungle tiger wolf raven dove eagle
snake lion horse pony butterfly cherry lemon peach wine champagne coffee cigarette lighter candle
lantern carnival circus rodeo ballroom disco arcade casino motel hotel lobby elevator rooftop balcony
subway station airport runway passport ticket suitcase postcard photograph polaroid cassette vinyl
record stereo speaker headphones microphone stage spotlight encore curtain applause fever pressure
gravity velocity distance horizon skyline avenue boulevard alley bridge tunnel canyon glacier volcano
""".split()

_SYLLABLES = (
    "ka lo mi ra ve zu tan dor el fin gar hul ix jo kem lus mor nex ol pra quin rel sor tyv ur vax wen "
    "yol zen bri cha dri fla glo kri mal nor pel sha tri vel wyn zor ash bel cor dax eno fey lir nim ost"
).split()

NON_LATIN: dict[str, tuple[list[str], str]] = {
    "cyrillic": ("ка ло ми ра ве зу та до ни со ру ша пе ти ва ко на мо ле да бо гу".split(), " "),
    "cjk": ("星 月 光 夜 愛 風 花 雨 心 夢 海 空 火 山 川 雪 春 秋 音 歌 青 白 金 雲".split(), ""),
    "arabic": ("حب ليل نور قلب بحر سما ورد شمس قمر روح نجم ريح دار عين ياس سلام حلم صوت مطر بيت نار ماء".split(), " "),
    "hangul": ("사 랑 별 빛 밤 하 늘 꿈 노 래 바 다 마 음 시 간 너 나 우 리 소 녀 봄 길".split(), " "),
    "greek": ("κα λο μι ρα βε ζυ τα δο νι σο ρυ λα πε τι βα κο να μο ξε φι γη δε ηλ ος".split(), " "),
}
_SCRIPTS = list(NON_LATIN)


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct made-up words of 2-3 syllables (the styles' private vocabulary)."""
    syl = np.array(_SYLLABLES)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        parts = syl[rng.integers(0, len(syl), size=rng.integers(2, 4))]
        word = "".join(parts)
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def title_words() -> list[str]:
    """Capitalised words titles and names are built from (content words, then function words)."""
    words = CONTENT_WORDS + [w for w in COMMON_WORDS if w.isalpha() and len(w) > 2]
    return [w[:1].upper() + w[1:] for w in dict.fromkeys(words)]


def non_latin_name(code: int, script: int, parts: int = 2) -> str:
    """A name in a non-Latin script; distinct ``code`` values give distinct names within a script."""
    sylls, sep = NON_LATIN[_SCRIPTS[script % len(_SCRIPTS)]]
    base = len(sylls)
    digits = []
    code = int(code)
    while True:
        digits.append(sylls[code % base])
        code //= base
        if code == 0:
            break
    while len(digits) < 2 * parts:
        digits.append(sylls[(len(digits) * 7) % base])
    half = len(digits) // 2
    return "".join(digits[:half]) + sep + "".join(digits[half:])


# Artist name patterns: every pattern uses both words, so (pattern, a, b) -> name is one-to-one.
_ARTIST_PATTERNS = [
    "{A} {B}", "{A}{b}", "The {A} {B}s", "DJ {A}{b}", "Lil {A}{b}", "{A} & the {B}s", "MC {A} {B}", "{A}-{B}",
]  # fmt: skip


def artist_name_capacity(n_words: int) -> int:
    """How many distinct Latin artist names :func:`artist_name` can make without a numeric suffix."""
    return len(_ARTIST_PATTERNS) * n_words * n_words


def artist_name(code: int, words: list[str], quoted: bool, script: int) -> str:
    """Render artist ``code`` (a unique integer) as a name; no commas, so Artist(s) lists split cleanly.

    Args:
        code: the artist's unique name code (already scrambled by the caller).
        words: capitalised name words.
        quoted: give the artist a quoted nickname (``"Weird Al" Yankovic`` style).
        script: -1 for Latin, else a non-Latin script index.
    """
    if script >= 0:
        return non_latin_name(code, script)
    n = len(words)
    cap = artist_name_capacity(n)
    suffix = f" {code // cap + 1}" if code >= cap else ""
    code %= cap
    pattern, rest = divmod(code, n * n)
    a, b = words[rest // n], words[rest % n]
    if quoted:
        return f'"{a}" {b}{suffix}' if pattern % 2 else f'{a} "{b}" {words[(rest * 31) % n]}{suffix}'
    return _ARTIST_PATTERNS[pattern].format(A=a, B=b, b=b.lower()) + suffix


def token_table(words: list[str]) -> np.ndarray:
    """Every lyric word in three spellings: plain, with a trailing comma, capitalised (a line start)."""
    plain = list(words)
    return np.array(plain + [w + "," for w in plain] + [w[:1].upper() + w[1:] for w in plain], dtype=object)


def block_lyrics(
    rng: np.random.Generator,
    n_words: np.ndarray,
    vocab: np.ndarray,
    topic: np.ndarray,
    common_cdf: np.ndarray,
    tokens: np.ndarray,
) -> list[str]:
    """Lyrics for a block of songs, each a single line: tagged stanzas, a repeated chorus, double spaces.

    Words mix the common function words (ids ``0..len(common_cdf)``, Zipf-weighted), any other word,
    the song's style vocabulary (row of ``vocab``) and its cluster's topic words (row of ``topic``), so
    that lyrics carry style and neighbourhood signal without giving it away. Drawn for the whole block.

    Args:
        rng: the block's generator.
        n_words: words to draw per song (verses and one chorus; the chorus repeats after each verse).
        vocab: (songs, V) word ids of each song's style vocabulary.
        topic: (songs, T) word ids of each song's cluster topic.
        common_cdf: cumulative weights of the common words.
        tokens: :func:`token_table` of all words (common first).
    """
    n_songs, total = len(n_words), int(n_words.sum())
    song = np.repeat(np.arange(n_songs), n_words)
    kind = rng.random(total)
    n_common = len(common_cdf)
    word = np.select(
        [kind < 0.55, kind < 0.72, kind < 0.9],
        [np.minimum(np.searchsorted(common_cdf, rng.random(total)), n_common - 1),
         rng.integers(n_common, len(tokens) // 3, total),
         vocab[song, rng.integers(0, vocab.shape[1], total)]],
        topic[song, rng.integers(0, topic.shape[1], total)],
    )  # fmt: skip
    style = rng.random(total)
    spelling = np.where(style < 0.07, 1, np.where(style < 0.21, 2, 0))  # comma, capital (line start), plain
    toks = tokens[spelling * (len(tokens) // 3) + word].tolist()
    chorus_len = rng.integers(18, 30, size=n_songs)
    verse_len = rng.integers(35, 70, size=n_songs)
    quote_at = np.where(rng.random(n_songs) < 0.35, rng.random(n_songs), -1.0)
    bridge = rng.random(n_songs) < 0.3
    out = []
    offset = 0
    for i, n in enumerate(n_words.tolist()):
        words = toks[offset : offset + n]
        offset += n
        ch = min(int(chorus_len[i]), n // 3)
        chorus, verses = words[:ch], words[ch:]
        step = int(verse_len[i])
        chunks = [verses[start : start + step] for start in range(0, len(verses), step)]
        if quote_at[i] >= 0 and chunks and len(chunks[0]) > 5:
            chunk = chunks[int(quote_at[i] * len(chunks))] if len(chunks[-1]) > 5 else chunks[0]
            q = 1 + int(quote_at[i] * (len(chunk) - 4))
            chunk[q : q + 3] = ["said", '"' + chunk[q + 1].lower(), chunk[q + 2].rstrip(",") + '"']
        chorus_text = "[Chorus] " + _cap(" ".join(chorus))
        stanzas = []
        for v, chunk in enumerate(chunks):
            stanzas.append(f"[Verse {v + 1}] " + _cap(" ".join(chunk)))
            stanzas.append(chorus_text)
        if bridge[i] and len(stanzas) > 2:
            stanzas.insert(-1, "[Bridge] " + _cap(" ".join(verses[-12:])))
        out.append("  ".join(stanzas) if stanzas else chorus_text)
    return out


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]
