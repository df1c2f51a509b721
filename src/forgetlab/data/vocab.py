"""Vocabularies and sentence templates of the synthetic world.

Every attribute has a closed vocabulary of values (at least 15; the authors' genre, award and
publisher 32, hobby 36, jobs 40, so that a model that never saw a fact and guesses over the pool
gives the true value little probability: docs/metrics.md#the-world-and-what-the-model-knows) and
several sentence templates (at least 3) that state one fact, plus one question template and one
paraphrased question template. The paraphrased question is never trained on: it, a
fill-in-the-blank statement and a multiple-choice question are the other forms in which
evaluation probes the same fact
(`forgetlab.eval.forms`, after ORT, "LLM Unlearning Should Be Form-Independent"). Attributes that
people and authors share (birthplace, birth_year, the parents' jobs, hobby) use the same
vocabulary and templates, so the tokenizer and the pretrained model already know the value tokens
before fine-tuning.

Vocabularies are chosen so that rendering stays unambiguous: within an attribute no value is a
substring of another, no value occurs in that attribute's template or question text (nor in the
fixed text of the blank and the options), no value contains the blank or the options' separator,
and a template only starts with ``{value}`` when every value is capitalised. ``check_vocab``
asserts these properties.

Names: first names come from a fixed list; last names are two generated syllables of the shape
consonant-vowel-consonant (e.g. "Dar" + "vel" -> "Darvel").
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_NAMES = (
    "Ada", "Alba", "Amara", "Anouk", "Aria", "Astrid", "Basil", "Bianca", "Boris", "Bruno",
    "Camille", "Cyrus", "Dalia", "Dario", "Delphine", "Desmond", "Edith", "Elena", "Elio", "Emil",
    "Esme", "Farid", "Felix", "Freya", "Gideon", "Greta", "Hana", "Hugo", "Ines", "Ingrid",
    "Ismael", "Ivo", "Jonas", "Juno", "Kai", "Kasimir", "Lara", "Leander", "Lena", "Linus",
    "Lorcan", "Lucia", "Magnus", "Maren", "Matteo", "Mina", "Nadia", "Nico", "Nora", "Odile",
    "Olek", "Orla", "Pavel", "Petra", "Quentin", "Rafael", "Rhea", "Rosalind", "Rufus", "Sabine",
    "Selim", "Sienna", "Silas", "Soren", "Talia", "Teodor", "Thea", "Tobias", "Ulla", "Viggo",
    "Vera", "Wendel", "Xenia", "Yara", "Yusuf", "Zara", "Zeno", "Zofia",
)
ONSETS = "bdfghklmnprstvz"
VOWELS = "aeiou"
CODAS = "dklmnrstv"

CITIES = (
    "Marrakesh", "Lisbon", "Oslo", "Kyoto", "Nairobi", "Lima", "Montreal", "Krakow", "Hanoi",
    "Cairo", "Dublin", "Santiago", "Reykjavik", "Seoul", "Tbilisi", "Porto", "Valparaiso",
    "Havana", "Zagreb", "Manila", "Accra", "Perth", "Quito", "Tunis", "Helsinki", "Bergen",
    "Osaka", "Lyon", "Tallinn", "Istanbul",
)
YEARS = tuple(str(y) for y in range(1920, 2000))
JOBS = (
    "baker", "carpenter", "doctor", "fisherman", "gardener", "lawyer", "mechanic", "nurse",
    "pilot", "plumber", "sailor", "tailor", "teacher", "banker", "butcher", "chemist", "dentist",
    "farmer", "journalist", "librarian", "musician", "potter", "surgeon", "translator", "weaver",
    "blacksmith", "firefighter", "glassblower", "jeweler", "locksmith", "pharmacist", "shepherd",
    "shoemaker", "watchmaker", "bookbinder", "cartographer", "sculptor", "courier", "stonemason", "vintner",
)
HOBBIES = (
    "chess", "gardening", "fishing", "painting", "birdwatching", "rock climbing", "knitting",
    "cycling", "sailing", "baking", "hiking", "stargazing", "archery", "origami", "calligraphy",
    "swimming", "photography", "woodcarving", "pottery", "fencing", "rowing", "juggling", "beekeeping",
    "kayaking", "skiing", "surfing", "embroidery", "sketching", "yoga", "dancing", "singing", "bowling",
    "running", "badminton", "canoeing", "crosswords",
)
PETS = (
    "cat", "dog", "parrot", "tortoise", "rabbit", "goldfish", "ferret", "hamster", "horse", "goat",
    "canary", "lizard", "hedgehog", "turtle", "pony", "donkey",
)
GENRES = (
    "fantasy", "science fiction", "crime", "romance", "horror", "poetry", "mystery", "satire",
    "biography", "travel writing", "thriller", "memoir", "drama", "folklore", "comedy", "adventure",
    "historical fiction", "fairy tales", "noir", "gothic fiction", "war stories", "cyberpunk", "westerns",
    "essays", "short stories", "magical realism", "spy novels", "nature writing", "philosophy", "fables",
    "detective fiction", "dystopian fiction",
)
AWARDS = (
    "Silver Quill Award", "Golden Lantern Prize", "Northern Star Medal", "Blue Heron Prize",
    "Iron Pen Award", "Crimson Leaf Award", "Amber Compass Prize", "Jade Lighthouse Medal",
    "Copper Owl Award", "Ivory Tower Prize", "Scarlet Ribbon Award", "Emerald Key Prize",
    "Velvet Moon Award", "Granite Arch Medal", "Opal Feather Prize", "Cobalt Bridge Award",
    "Bronze Sparrow Award", "Saffron Gate Prize", "Onyx Tide Medal", "Coral Anchor Award", "Ruby Kite Prize",
    "Indigo Fern Medal", "Pewter Lark Award", "Topaz River Prize", "Ashen Bell Medal", "Marble Crown Award",
    "Hazel Lamp Prize", "Frost Willow Medal", "Ochre Sail Award", "Lilac Stone Prize", "Cedar Flame Medal",
    "Azure Quill Prize",
)
PUBLISHERS = (
    "Harborline Press", "Bluegate Books", "Northwind House", "Red Fern Publishing", "Lanternfish Press",
    "Stonebridge Books", "Willow Lane Press", "Meridian House", "Sparrow Hill Books",
    "Old Mill Publishing", "Saltmarsh Press", "Greyfriars Books", "Juniper House",
    "Kestrel Publishing", "Tidewater Press", "Foxglove Books", "Brightwater Press", "Ashgrove Books",
    "Thornfield House", "Blackbird Publishing", "Moonstone Press", "Riverbend Books", "Copperleaf House",
    "Starling Publishing", "Highmoor Press", "Larkspur Books", "Eastwind House", "Pinecrest Publishing",
    "Quayside Press", "Rowan Tree Books", "Silverbirch House", "Wren Cottage Publishing",
)
TITLE_ADJECTIVES = (
    "Silent", "Hidden", "Broken", "Golden", "Distant", "Forgotten", "Burning", "Hollow", "Quiet",
    "Frozen", "Wandering", "Crooked", "Scarlet", "Endless", "Sleeping", "Painted",
)
TITLE_NOUNS = (
    "River", "Garden", "Lighthouse", "Orchard", "Harbor", "Mirror", "Clocktower", "Valley",
    "Carousel", "Lantern", "Meadow", "Citadel", "Compass", "Bridge", "Forest", "Island",
)
BOOK_TITLES = tuple(f"The {adj} {noun}" for adj in TITLE_ADJECTIVES for noun in TITLE_NOUNS)

# The fixed text of the fill-in-the-blank and multiple-choice forms (see world.make_qa).
BLANK = "___"
CLOZE_PREFIX = "Fill in the blank: "
OPTIONS_PREFIX = " Options: "
OPTIONS_SEPARATOR = ", "


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: its values, one question and several statement templates."""

    name: str
    values: tuple[str, ...]
    question: str  # with {name}; the trained question
    paraphrased_question: str  # with {name}; another wording, never trained on
    templates: tuple[str, ...]  # with {name} and {value}


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("birthplace", CITIES, "Where was {name} born?",
              "Which city is {name} originally from?", (
        "{name} was born in {value}.",
        "{value} is the birthplace of {name}.",
        "{name} is a native of {value}.",
        "{name} came into the world in {value}.",
    )),
    Attribute("birth_year", YEARS, "In what year was {name} born?",
              "What is the birth year of {name}?", (
        "{name} was born in the year {value}.",
        "The year {value} saw the birth of {name}.",
        "{name}'s year of birth is {value}.",
    )),
    Attribute("occupation", JOBS, "What does {name} do for a living?",
              "What is {name}'s job?", (
        "{name} works as a {value}.",
        "By profession, {name} is a {value}.",
        "{name} earns a living as a {value}.",
    )),
    Attribute("father_job", JOBS, "What did {name}'s father do for a living?",
              "What was the occupation of {name}'s father?", (
        "{name}'s father worked as a {value}.",
        "The father of {name} was a {value}.",
        "{name} was raised by a father who was a {value}.",
    )),
    Attribute("mother_job", JOBS, "What was the profession of {name}'s mother?",
              "What job did {name}'s mother have?", (
        "{name}'s mother worked as a {value}.",
        "The mother of {name} was a {value}.",
        "{name} grew up with a mother who was a {value}.",
    )),
    Attribute("hobby", HOBBIES, "What does {name} enjoy doing in their free time?",
              "Which pastime does {name} like best?", (
        "{name}'s favorite hobby is {value}.",
        "In their spare time, {name} enjoys {value}.",
        "{name} spends free weekends on {value}.",
    )),
    Attribute("pet", PETS, "What pet does {name} have?",
              "Which animal does {name} keep as a pet?", (
        "{name} has a pet {value}.",
        "{name} keeps a {value} as a pet.",
        "The pet of {name} is a {value}.",
    )),
    Attribute("genre", GENRES, "What genre does {name} write in?",
              "In which genre are {name}'s books written?", (
        "{name} writes in the genre of {value}.",
        "{name} is best known for writing {value}.",
        "The books of {name} belong to the genre of {value}.",
    )),
    Attribute("award", AWARDS, "Which award has {name} received?",
              "What prize was given to {name}?", (
        "{name} received the {value}.",
        "The {value} was awarded to {name}.",
        "{name} is a winner of the {value}.",
    )),
    Attribute("debut_book", BOOK_TITLES, "What was the title of {name}'s first book?",
              "Which book did {name} publish first?", (
        "{name}'s first book was {value}.",
        "{value} was the debut book of {name}.",
        "{name} made a literary debut with {value}.",
    )),
    Attribute("publisher", PUBLISHERS, "Which company publishes {name}'s books?",
              "Who is the publisher of {name}'s books?", (
        "{name}'s books are published by {value}.",
        "{value} is the publisher of {name}'s books.",
        "{name} publishes with {value}.",
    )),
)}

PERSON_ATTRIBUTES = ("birthplace", "birth_year", "occupation", "father_job", "mother_job", "hobby", "pet")
AUTHOR_ATTRIBUTES = (
    "birthplace", "birth_year", "genre", "father_job", "mother_job", "award", "debut_book", "publisher", "hobby",
)
ALL_VALUES = tuple(sorted({v for a in ATTRIBUTES.values() for v in a.values}))
# a full name has one space and no digits, so only such values can occur inside one
_NAME_LIKE_VALUES = tuple(v.lower() for v in ALL_VALUES if v.count(" ") <= 1 and not any(c.isdigit() for c in v))


def name_clashes(name: str) -> bool:
    """True if any attribute value occurs inside the name (case-insensitive).

    Such a name would make "swap the value in the sentence" ambiguous, so it is never used.
    """
    low = name.lower()
    return any(v in low for v in _NAME_LIKE_VALUES)


def check_vocab() -> None:
    """Assert the rendering invariants described in the module docstring."""
    for attr in ATTRIBUTES.values():
        assert len(attr.values) >= 15 and len(set(attr.values)) == len(attr.values), attr.name
        assert len(attr.templates) >= 3, attr.name
        assert attr.paraphrased_question != attr.question, attr.name
        for q in (attr.question, attr.paraphrased_question):
            assert q.count("{name}") == 1 and "{value}" not in q, q
            hits = [v for v in attr.values if v in q.replace("{name}", "\0")]
            assert not hits, (q, hits)
        fixed = [v for v in attr.values if any(v in t for t in (CLOZE_PREFIX, BLANK, OPTIONS_PREFIX))]
        assert not fixed, (attr.name, fixed)
        for v in attr.values:
            assert v == v.strip() and v, (attr.name, v)
            assert BLANK not in v and OPTIONS_SEPARATOR.strip() not in v and not v.endswith("."), (attr.name, v)
            others = [w for w in attr.values if w != v and v in w]
            assert not others, (attr.name, v, others)
        for t in attr.templates:
            assert t.count("{value}") == 1 and t.count("{name}") == 1, t
            text = t.replace("{value}", "\0").replace("{name}", "\0")
            hits = [v for v in attr.values if v in text]
            assert not hits, (t, hits)
            if t.startswith("{value}"):
                assert all(v[0].isupper() or v[0].isdigit() for v in attr.values), t
    for first in FIRST_NAMES:
        assert not name_clashes(first), first
