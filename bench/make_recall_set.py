"""Generate the multi-session labelled recall set: ``tests/memory/data/recall_multisession.json``.

Long conversations between two people over dated sessions, each turn a note, and questions whose
answers sit in known turns. The set is built to be hard in the ways real conversational memory
is hard, so that a search which only matches words, or only matches meaning, falls short:

- **paraphrase**: questions use other words than the answering turn ("new pet" for "brought
  home a beagle from the shelter");
- **speaker**: both speakers (and every conversation) have the same kinds of news with other
  values, so the question's name decides which turn answers it;
- **temporal**: a speaker has two pieces of news of one kind in different months, told with a
  relative date ("last weekend"), and the question names the month ("in May 2023");
- **neighbour**: the answering turn is a reply ("It went better than I hoped") whose subject is
  only in the turn before it ("How was your interview at Quillstone?");
- **update**: a later turn replaces an earlier one ("we moved again"), and the question asks for
  the current value.

Filler turns share the questions' vocabulary (work, pets, trips, books) without answering them,
each with a mundane aside so that no line repeats often.
Deterministic (a seeded ``random.Random``), no model, no network. Each question carries its
``kind`` and a ``split``: conversations c01-c05 are ``tune`` (for choosing weights), c06-c10
``test`` (for reporting). Run: ``python bench/make_recall_set.py [--out PATH] [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "tests/memory/data/recall_multisession.json"
CONVERSATIONS = 10
SESSIONS = 10
TURNS_PER_SESSION = 20
TUNE_CONVERSATIONS = 5

NAMES = (
    *("Caroline", "Melanie", "Jordan", "Priya", "Tomasz", "Aiko", "Mateo", "Fatima", "Gunnar"),
    *("Leila", "Darius", "Noor", "Elena", "Kwame", "Sofia", "Ravi", "Ingrid", "Omar", "Chloe"),
)

# One kind of news: what the speaker says (slots in braces), and how a question asks for it.
# ``kind`` is the question's difficulty class; ``twice`` kinds are told twice per speaker in
# different months (temporal); ``reply`` kinds are told as a question from the other speaker and
# an answer that does not repeat the subject (neighbour).


@dataclass(frozen=True)
class News:
    """A kind of news a speaker tells, and the question that asks for it."""

    topic: str
    says: tuple[str, ...]
    asks: tuple[str, ...]
    kind: str
    slots: dict[str, tuple[str, ...]]
    prompt: str = ""  # the other speaker's question before a reply (neighbour kinds)


NEWS = (
    News(
        "pet",
        (
            "We finally brought home a little {breed} from the shelter, {pet} owns the couch now.",
            "Say hello to {pet}! A {breed} we picked up from the rescue on Saturday.",
        ),
        ("What is the name of the new animal {S} adopted?", "What did {S} call their new pet?"),
        "paraphrase",
        {
            "breed": ("beagle", "corgi", "greyhound", "dachshund", "husky", "poodle", "whippet"),
            "pet": ("Biscuit", "Pickles", "Juniper", "Moose", "Waffles", "Pepper", "Otis"),
        },
    ),
    News(
        "job",
        (
            "Big news: I signed the offer from {company}, I start there as a {role} next month.",
            "I accepted the {role} position at {company}, awful commute but a great team.",
        ),
        ("Which employer is {S} joining?", "Where did {S} get hired?"),
        "paraphrase",
        {
            "company": ("Quillstone", "Brightwater Labs", "Haldane & Co", "Orbitex", "Fennmoor"),
            "role": (
                "data analyst",
                "nurse practitioner",
                "site engineer",
                "sous chef",
                "paralegal",
            ),
        },
    ),
    News(
        "book",
        (
            "I'm halfway through '{book}' and I keep staying up way too late with it.",
            "Just finished '{book}', the ending wrecked me for a whole evening.",
        ),
        ("What novel has {S} been absorbed in?", "Which story kept {S} awake at night?"),
        "paraphrase",
        {
            "book": (
                "The Salt Orchard",
                "A Lantern for Wolves",
                "Nine Quiet Rivers",
                "The Glass Cartographer",
                "Winter at Harrow End",
            )
        },
    ),
    News(
        "car",
        (
            "We traded in the old sedan for a {color} {car}, it drives like a dream.",
            "Picked up a used {color} {car} this week, finally something that starts in winter.",
        ),
        ("What vehicle does {S} get around in these days?", "What kind of automobile did {S} buy?"),
        "paraphrase",
        {
            "color": ("red", "silver", "dark green", "white", "navy"),
            "car": ("Subaru Outback", "Honda Fit", "Volvo wagon", "Mazda pickup", "Kia hatchback"),
        },
    ),
    News(
        "diet",
        (
            "I've gone completely {diet} since January and honestly I have more energy.",
            "No more {banned} for me, I'm trying the {diet} thing properly this time.",
        ),
        ("How has {S} changed the way they eat?", "What eating habits did {S} take up?"),
        "paraphrase",
        {
            "diet": ("vegan", "vegetarian", "pescatarian", "gluten-free", "sugar-free"),
            "banned": ("meat", "steak", "bread", "dessert", "cheese"),
        },
    ),
    News(
        "volunteer",
        (
            "I've been spending Saturday mornings at the {org}, mostly {task}.",
            "Started helping out at the {org} on weekends, {task} mostly.",
        ),
        ("Where does {S} give their time for free?", "What charity work does {S} do?"),
        "paraphrase",
        {
            "org": (
                "food bank",
                "animal shelter",
                "literacy center",
                "community garden",
                "hospice",
            ),
            "task": ("sorting donations", "walking dogs", "tutoring kids", "weeding beds"),
        },
    ),
    News(
        "gift",
        (
            "For our anniversary {partner} surprised me with a {gift}, I nearly cried.",
            "{partner} got me a {gift} for my birthday, how sweet is that?",
        ),
        ("What present did {S} receive from their partner?", "What did {S}'s spouse give them?"),
        "paraphrase",
        {
            "partner": ("Sam", "Alex", "Robin", "Jamie", "Morgan"),
            "gift": ("vintage record player", "hand-knit scarf", "telescope", "pottery wheel"),
        },
    ),
    News(
        "childhood",
        (
            "Growing up in {town} we spent every summer at my grandma's {place}.",
            "Every July as kids we'd pile into the van and drive to the {place} near {town}.",
        ),
        ("Where did {S} go during the holidays when they were young?",),
        "paraphrase",
        {
            "town": ("Duluth", "Galway", "Tromso", "Asheville", "Hobart"),
            "place": ("lake cabin", "farm", "beach house", "orchard"),
        },
    ),
    News(
        "allergy",
        (
            "Turns out I react badly to {allergen}, found out the hard way at a wedding.",
            "My doctor confirmed it: {allergen} makes my throat swell up, so no more of that.",
        ),
        ("What food or substance should {S} avoid for health reasons?",),
        "paraphrase",
        {"allergen": ("shellfish", "peanuts", "kiwi", "sesame", "penicillin", "latex")},
    ),
    News(
        "family",
        (
            "My {sibling} {name} is getting married in {month}, I'm giving a speech!",
            "{name}, my {sibling}, finally proposed and the wedding is set for {month}.",
        ),
        ("Which relative of {S} is tying the knot?", "Whose wedding will {S} speak at?"),
        "paraphrase",
        {
            "sibling": ("brother", "sister", "cousin"),
            "name": ("Lukas", "Mira", "Teodor", "Hana", "Felix"),
            "month": ("June", "September", "October", "December"),
        },
    ),
    News(
        "hobby",
        (
            "I signed up for a {hobby} course {when}, my hands are already sore.",
            "Tried my first {hobby} lesson {when} and I think I'm hooked.",
        ),
        (
            "What did {S} start learning in {month}?",
            "Which new pastime did {S} pick up in {month}?",
        ),
        "temporal",
        {
            "hobby": ("pottery", "salsa dancing", "watercolour", "rock climbing", "cello", "judo"),
            "when": ("last weekend", "yesterday", "last Tuesday", "two days ago"),
        },
    ),
    News(
        "trip",
        (
            "Just got back from {days} days in {city}, the {sight} was unreal.",
            "We spent {days} days in {city} {when}, I still dream about the {sight}.",
        ),
        ("Where did {S} travel in {month}?", "Which city did {S} visit in {month}?"),
        "temporal",
        {
            "days": ("four", "five", "six", "ten"),
            "city": ("Lisbon", "Kyoto", "Oaxaca", "Edinburgh", "Tbilisi", "Hanoi", "Valparaiso"),
            "sight": ("old harbour", "night market", "castle", "mountain trail", "cathedral"),
            "when": ("last week", "over the weekend", "this month"),
        },
    ),
    News(
        "event",
        (
            "We went to a {event} {when} and stayed until they turned the lights off.",
            "{when} I finally went to a {event}, way better than I expected.",
        ),
        ("What outing did {S} go on in {month}?", "What did {S} attend in {month}?"),
        "temporal",
        {
            "event": ("jazz concert", "comedy night", "pottery fair", "film festival", "ballet"),
            "when": ("last Friday", "yesterday", "last weekend", "on Saturday"),
        },
    ),
    News(
        "interview",
        ("Better than I hoped, they offered me the position before I even left the building!",),
        ("How did {S}'s interview with {company} go?", "What came of {S} meeting {company}?"),
        "neighbour",
        {"company": ("Quillstone", "Brightwater Labs", "Haldane & Co", "Orbitex", "Fennmoor")},
        prompt="Wasn't your interview at {company} this week? How did it go?",
    ),
    News(
        "results",
        (
            "All clear, the doctor said there is nothing to worry about at all.",
            "Mostly fine, I just need to come back in six months to check again.",
        ),
        ("What did {S}'s {test} show?", "What was the outcome of {S}'s {test}?"),
        "neighbour",
        {"test": ("MRI scan", "blood test", "knee X-ray", "allergy panel", "heart checkup")},
        prompt="Did you get the results of your {test} back yet?",
    ),
    News(
        "recommend",
        (
            "Definitely '{show}', we binged it in two nights and argued about it for a week.",
            "You have to watch '{show}', trust me on this one.",
        ),
        ("Which series did {S} tell {O} to watch?", "What TV did {S} suggest to {O}?"),
        "neighbour",
        {"show": ("Harbour Lights", "The Long Thaw", "Copper Ridge", "Small Hours", "Deep Field")},
        prompt="I need something new to watch, any {genre} you'd recommend?",
    ),
    News(
        "recital",
        (
            "She was brilliant, not one wrong note, and I cried through the whole thing.",
            "He was nervous at first but then he absolutely nailed it.",
        ),
        ("How did {S}'s kid do at the {show}?",),
        "neighbour",
        {"show": ("piano recital", "school play", "spelling bee", "swim meet", "choir concert")},
        prompt="How was the {show} on Sunday?",
    ),
    News(
        "home",
        (
            "Packing boxes again, the new job means we're moving to {city}.",
            "We signed the lease today, we're relocating to {city} at the end of the month.",
        ),
        ("Where does {S} live now?", "Which city is {S} based in these days?"),
        "update",
        {"city": ("Denver", "Rotterdam", "Austin", "Montreal", "Perth", "Porto")},
    ),
)
GENRES = ("thriller", "comedy", "drama", "documentary")

FILLER = (
    "How have you been? It feels like ages since we talked.",
    "Work has been exhausting lately, so many meetings about nothing.",
    "That sounds amazing, I'm really happy for you!",
    "We keep saying we'll get a pet someday, but the landlord says no.",
    "I should really read more, my phone eats all my evenings.",
    "My car has been making a strange rattling noise again.",
    "Do you have any trips planned this year? I need a holiday.",
    "Music always cheers me up when the week gets long.",
    "The kids have school events every single weekend it seems.",
    "I've been trying to eat better, with mixed results honestly.",
    "My doctor keeps telling me to sleep more, easier said than done.",
    "We watched a couple of shows but nothing really stuck.",
    "The weather has been gloomy, I miss the sun.",
    "Family stuff has been hectic, but good hectic.",
    "I'm thinking of changing jobs, but I'm not sure yet.",
    "Moving is the worst, I never want to pack a box again.",
    "Haha, that's so typical of you.",
    "Wow, I didn't expect that at all.",
    "Let's catch up properly next week, I have to run.",
    "Honestly I'm just glad the week is over.",
    "We went for a long walk by the river on Sunday.",
    "I finally cleaned out the garage, found so much junk.",
    "Any good news on your side?",
    "That reminds me, I need to call my mom back.",
    "Our neighbours just got a puppy and it barks all night.",
    "I tried a new recipe and it was a disaster, we ordered pizza.",
    "I've been meaning to take up a hobby, maybe something creative.",
    "Is your sister still living abroad?",
    "Work trips are fun for a day and then just tiring.",
    "The gym and I are not on speaking terms this month.",
)
# A filler line is one of FILLER then one of ASIDES, so no line repeats often enough to crowd a
# search's top ten with copies of itself.
ASIDES = (
    "The printer at work jammed three times today.",
    "Our neighbour's cat keeps wandering into the kitchen.",
    "I burnt the toast again this morning.",
    "The bus was twenty minutes late, as usual.",
    "I finally fixed the squeaky door upstairs.",
    "We ran out of coffee and it was a crisis.",
    "My phone screen cracked on Tuesday.",
    "The garden needs weeding but it keeps raining.",
    "I spent the evening sorting old photos.",
    "The new bakery downstairs smells incredible.",
    "I keep forgetting to water the plants.",
    "Traffic on the bridge was a nightmare.",
    "We repainted the hallway a pale yellow.",
    "My laptop decided to update in the middle of a call.",
    "I lost my umbrella somewhere between home and the office.",
    "The upstairs neighbours were drilling all weekend.",
    "I tried yoga at home and pulled something.",
    "We had leftovers three nights in a row.",
    "The dishwasher is making that noise again.",
    "I signed up for a newsletter by accident and now it's everywhere.",
    "Someone left flowers on our doorstep, no idea who.",
    "The heating broke and we wore coats indoors.",
    "I found a twenty in an old jacket.",
    "The power went out for an hour last night.",
    "I've been waking up at five for no reason.",
)


def _fill(template: str, values: dict[str, str]) -> str:
    return template.format(**values)


@dataclass
class Planned:
    """A piece of news placed in a session: its turns (speaker, text) and its question."""

    session: int
    turns: list[tuple[int, str]]  # (speaker index, text); the answer is the last turn
    question: str
    kind: str


def _month(date: datetime) -> str:
    return date.strftime("%B %Y")


def _plan_speaker(
    rng: random.Random, speaker: int, names: list[str], dates: list[datetime]
) -> list[Planned]:
    """Seventeen pieces of news for one speaker, spread over the sessions."""
    other = names[1 - speaker]
    me = names[speaker]
    plans: list[Planned] = []
    single = [n for n in NEWS if n.kind in ("paraphrase", "neighbour")]
    for news in rng.sample(single, 12):
        session = rng.randrange(SESSIONS)
        values = {k: rng.choice(v) for k, v in news.slots.items()} | {"genre": rng.choice(GENRES)}
        text = _fill(rng.choice(news.says), values)
        question = _fill(rng.choice(news.asks), values | {"S": me, "O": other})
        turns = [(speaker, text)]
        if news.prompt:
            turns.insert(0, (1 - speaker, _fill(news.prompt, values)))
        plans.append(Planned(session, turns, question, news.kind))
    temporal = [n for n in NEWS if n.kind == "temporal"]
    for news in rng.sample(temporal, 2):
        first, second = sorted(rng.sample(range(SESSIONS), 2))
        while _month(dates[first]) == _month(dates[second]):
            first, second = sorted(rng.sample(range(SESSIONS), 2))
        choices = rng.sample(news.slots[next(iter(news.slots))], 2)
        for session, choice in zip((first, second), choices, strict=True):
            values = {k: rng.choice(v) for k, v in news.slots.items()}
            values[next(iter(news.slots))] = choice
            values["month"] = _month(dates[session])
            text = _fill(rng.choice(news.says), values)
            text = text[0].upper() + text[1:]
            question = _fill(rng.choice(news.asks), values | {"S": me})
            plans.append(Planned(session, [(speaker, text)], question, news.kind))
    home = next(n for n in NEWS if n.kind == "update")
    first, second = sorted(rng.sample(range(SESSIONS), 2))
    cities = rng.sample(home.slots["city"], 2)
    says = list(home.says)
    rng.shuffle(says)
    earlier = Planned(first, [(speaker, _fill(says[0], {"city": cities[0]}))], "", "update")
    plans.append(earlier)
    later_text = _fill(says[1], {"city": cities[1]})
    question = _fill(rng.choice(home.asks), {"S": me})
    plans.append(Planned(second, [(speaker, later_text)], question, "update"))
    return plans


def _conversation(rng: random.Random, number: int) -> dict[str, Any]:
    cid = f"c{number:02d}"
    names = rng.sample(NAMES, 2)
    start = datetime(2023, 1, 1) + timedelta(days=rng.randrange(120))
    dates: list[datetime] = []
    day = start
    for _ in range(SESSIONS):
        day = day + timedelta(days=rng.randint(9, 30))
        dates.append(day.replace(hour=rng.randint(8, 21), minute=rng.choice((5, 20, 35, 50))))
    plans = _plan_speaker(rng, 0, names, dates) + _plan_speaker(rng, 1, names, dates)
    turns: list[dict[str, Any]] = []
    questions: list[dict[str, Any]] = []
    for session in range(SESSIONS):
        placed = [p for p in plans if p.session == session]
        blocks: list[tuple[list[tuple[int, str]], Planned | None]] = [(p.turns, p) for p in placed]
        used = sum(len(p.turns) for p in placed)
        blocks += [
            ([(rng.randrange(2), f"{rng.choice(FILLER)} {rng.choice(ASIDES)}")], None)
            for _ in range(max(0, TURNS_PER_SESSION - used))
        ]
        rng.shuffle(blocks)
        index = 0
        for block, plan in blocks:
            for speaker, text in block:
                index += 1
                turns.append(
                    {
                        "id": f"{cid}:s{session + 1:02d}:t{index:02d}",
                        "conversation": cid,
                        "session": session + 1,
                        "date": dates[session].isoformat(timespec="minutes"),
                        "speaker": names[speaker],
                        "text": text,
                    }
                )
            if plan is not None and plan.question:
                questions.append(
                    {
                        "conversation": cid,
                        "question": plan.question,
                        "answers": [turns[-1]["id"]],
                        "kind": plan.kind,
                        "split": "tune" if number <= TUNE_CONVERSATIONS else "test",
                    }
                )
    return {"turns": turns, "questions": questions}


def build(seed: int) -> dict[str, Any]:
    """The whole set for ``seed``: turns in order, then the questions."""
    rng = random.Random(seed)
    turns: list[dict[str, Any]] = []
    questions: list[dict[str, Any]] = []
    for number in range(1, CONVERSATIONS + 1):
        conversation = _conversation(rng, number)
        turns += conversation["turns"]
        questions += conversation["questions"]
    for i, question in enumerate(questions, 1):
        question["id"] = f"q{i:03d}"
    return {
        "description": (
            "Generated by bench/make_recall_set.py: long two-speaker conversations over dated "
            "sessions; questions phrased unlike their answers, needing the speaker, the month "
            "or the turn before the answer. Search each question within its conversation "
            "(the turns' `conversation` tag). Split: `tune` to choose weights, `test` to report."
        ),
        "seed": seed,
        "turns": turns,
        "questions": questions,
    }


def main() -> None:
    """Write the set as JSON, one turn or question a line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    data = build(args.seed)
    lines = ["{", f'  "description": {json.dumps(data["description"])},', f'  "seed": {args.seed},']
    for key in ("turns", "questions"):
        rows = ",\n".join(f"    {json.dumps(r, ensure_ascii=False)}" for r in data[key])
        lines.append(f'  "{key}": [\n{rows}\n  ]' + ("," if key == "turns" else ""))
    lines.append("}")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {"out": str(args.out), "turns": len(data["turns"]), "questions": len(data["questions"])}
        )
    )


if __name__ == "__main__":
    main()
