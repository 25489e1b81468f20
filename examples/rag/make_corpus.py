"""Write corpus.jsonl: 300 short documents on 20 everyday and technical topics, deterministically.

Each topic has six hand-written facts; each document joins two facts of one topic (15 pairs per topic),
so documents overlap the way real notes do and a query has several good answers. Run it again to
rebuild the shipped corpus.jsonl byte for byte: ``python make_corpus.py``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

TOPICS: dict[str, list[str]] = {
    "bread": [
        "Bread dough rises because yeast ferments sugars and releases carbon dioxide.",
        "A sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive with flour and water.",
        "Kneading develops gluten, the protein network that traps gas and gives bread its chew.",
        "Most loaves bake at 220 to 250 degrees Celsius; steam in the first minutes lets the crust expand.",
        "A second rise, called proofing, usually takes 45 to 90 minutes at room temperature.",
        "Bread is done when the crust is deep brown and the loaf sounds hollow when tapped underneath.",
    ],
    "tides": [
        "Tides are caused mainly by the Moon's gravity pulling on the oceans.",
        "Most coasts see two high tides and two low tides in a little over 24 hours.",
        "Spring tides, with the largest range, happen when the Sun and Moon line up at new and full moon.",
        "The Bay of Fundy in Canada has the highest tidal range in the world, over 16 metres.",
        "Tidal power stations turn the flow of water through a barrage or turbines into electricity.",
        "Neap tides have the smallest range and occur when the Sun and Moon are at right angles.",
    ],
    "kubernetes": [
        "Kubernetes schedules containers onto nodes and restarts them when they fail.",
        "A Kubernetes pod is the smallest deployable unit and holds one or more containers.",
        "A Deployment keeps a chosen number of pod replicas running and rolls out new versions gradually.",
        "Services give a stable network address to a changing set of pods.",
        "Readiness probes tell Kubernetes when a container may receive traffic.",
        "The Horizontal Pod Autoscaler adds or removes replicas based on CPU use or custom metrics.",
    ],
    "penguins": [
        "Penguins are flightless birds that live almost entirely in the Southern Hemisphere.",
        "Emperor penguins breed during the Antarctic winter and males keep the egg warm on their feet.",
        "Penguins use their wings as flippers and can swim faster than 20 kilometres per hour.",
        "The Galapagos penguin lives near the equator, the most northern of all penguins.",
        "Penguins eat krill, fish and squid caught during dives that can last several minutes.",
        "Dense, overlapping feathers and a layer of fat keep penguins warm in icy water.",
    ],
    "volcanoes": [
        "A volcano erupts when molten rock, called magma, rises through the crust and reaches the surface.",
        "Shield volcanoes such as Mauna Loa have gentle slopes built from runny basalt lava.",
        "Stratovolcanoes like Mount Fuji are steep cones of alternating lava and ash layers.",
        "Pyroclastic flows are fast avalanches of hot gas and rock that rush down a volcano's flanks.",
        "Volcanologists watch for earthquakes, ground swelling and gas emissions before an eruption.",
        "Volcanic ash can stop jet engines, which is why air traffic avoids ash clouds.",
    ],
    "vaccines": [
        "Vaccines train the immune system to recognise a pathogen without causing the disease.",
        "mRNA vaccines give cells instructions to make a harmless piece of a virus's spike protein.",
        "Booster doses restore immunity that fades over time after the first vaccination.",
        "Herd immunity protects people who cannot be vaccinated when most of a population is immune.",
        "Edward Jenner's smallpox vaccine of 1796 used material from cowpox sores.",
        "Some vaccines must be stored frozen, which makes distribution to remote areas harder.",
    ],
    "chess": [
        "Each chess player starts with sixteen pieces, among them one king, one queen and eight pawns.",
        "Checkmate happens when the king is attacked and has no legal way to escape.",
        "Castling moves the king two squares toward a rook and puts the rook on the other side of the king.",
        "The Sicilian Defence is the most popular reply to the opening move 1.e4.",
        "A pawn that reaches the last rank is promoted, usually to a queen.",
        "Stalemate, when the side to move has no legal move but is not in check, ends the game in a draw.",
    ],
    "coffee": [
        "Coffee beans are the roasted seeds of the fruit of the Coffea plant.",
        "Espresso is made by forcing hot water through finely ground coffee at about nine bars of pressure.",
        "Arabica beans taste sweeter and softer, while robusta beans carry more caffeine and bitterness.",
        "Light roasts keep more of a bean's fruity acidity; dark roasts taste of chocolate and smoke.",
        "Cold brew steeps coarse coffee grounds in cold water for twelve to twenty-four hours.",
        "Freshly ground coffee loses aroma within minutes, so grinding just before brewing helps.",
    ],
    "bicycles": [
        "A bicycle chain transfers the rider's pedalling force from the chainring to the rear wheel.",
        "Derailleur gears move the chain between sprockets to change how hard it is to pedal.",
        "Tyre pressure for road bikes is often 5 to 8 bar, much higher than for mountain bikes.",
        "Disc brakes keep stopping power in the wet better than rim brakes.",
        "A bike fit adjusts saddle height so the knee stays slightly bent at the bottom of the stroke.",
        "Cleaning and oiling the chain regularly makes a drivetrain last longer.",
    ],
    "photosynthesis": [
        "Photosynthesis lets plants turn light, water and carbon dioxide into sugar and oxygen.",
        "Chlorophyll, the green pigment in leaves, absorbs red and blue light.",
        "The light reactions of photosynthesis take place in the thylakoid membranes of chloroplasts.",
        "The Calvin cycle fixes carbon dioxide into sugars using energy from the light reactions.",
        "C4 plants such as maize concentrate carbon dioxide to photosynthesise efficiently in hot climates.",
        "Stomata are small pores on leaves that let carbon dioxide in and water vapour out.",
    ],
    "databases": [
        "A database index speeds up lookups at the cost of extra storage and slower writes.",
        "ACID transactions are atomic, consistent, isolated and durable.",
        "SQL joins combine rows from two tables that share a key.",
        "Write-ahead logging records changes before they are applied so a crash loses no committed data.",
        "Sharding splits a large table across several servers by a key such as a customer id.",
        "Vacuuming in PostgreSQL reclaims space left by updated and deleted rows.",
    ],
    "honeybees": [
        "Honeybees communicate the direction of flowers to other workers with a waggle dance.",
        "A colony has one queen, thousands of female workers and, in summer, a few hundred male drones.",
        "Bees make honey by evaporating water from nectar and adding enzymes.",
        "Worker bees build hexagonal wax cells to store honey and raise brood.",
        "The varroa mite is one of the most serious threats to honeybee colonies.",
        "Bees pollinate many crops, including apples, almonds and blueberries.",
    ],
    "rust-language": [
        "Rust's ownership rules let the compiler free memory without a garbage collector.",
        "The borrow checker allows many shared references or one mutable reference, never both at once.",
        "Cargo is Rust's build tool and package manager; packages are called crates.",
        "Rust's Result type makes error handling explicit, and the question-mark operator propagates errors.",
        "Traits in Rust describe shared behaviour, similar to interfaces in other languages.",
        "Async Rust uses futures that do nothing until an executor such as Tokio polls them.",
    ],
    "marathon": [
        "A marathon is 42.195 kilometres long.",
        "Runners often taper, cutting their training volume, in the two or three weeks before a marathon.",
        "Hitting the wall happens when the body runs low on stored glycogen late in a race.",
        "Energy gels and sports drinks during a marathon help keep blood sugar up.",
        "Long slow runs build the endurance base that marathon training depends on.",
        "A negative split means running the second half of the race faster than the first.",
    ],
    "solar-panels": [
        "Solar panels turn sunlight into electricity with photovoltaic cells made mostly of silicon.",
        "An inverter converts the direct current from solar panels into alternating current for the home.",
        "Panels in the Northern Hemisphere produce the most energy facing south.",
        "Solar panel output falls slowly with age, typically by about half a percent per year.",
        "Net metering credits households for surplus solar electricity fed into the grid.",
        "Dust and shade on a few cells can reduce the output of a whole solar string.",
    ],
    "jazz": [
        "Jazz grew out of New Orleans in the early twentieth century, mixing blues, ragtime and brass band music.",
        "Improvisation over a chord progression is at the heart of jazz performance.",
        "Bebop, led by Charlie Parker and Dizzy Gillespie, brought fast tempos and complex harmonies.",
        "Miles Davis's album Kind of Blue is built on modal scales rather than quick chord changes.",
        "Swing rhythm plays pairs of eighth notes long-short instead of evenly.",
        "A jazz standard is a well-known tune that musicians reinterpret, like Autumn Leaves.",
    ],
    "sleep": [
        "Adults need about seven to nine hours of sleep per night.",
        "Sleep cycles of roughly ninety minutes alternate between deep non-REM sleep and REM sleep.",
        "Most vivid dreaming happens during REM sleep, when the eyes move quickly under the lids.",
        "Bright screens late in the evening can delay the release of melatonin.",
        "Caffeine has a half-life of around five hours, so an afternoon coffee can disturb sleep.",
        "Keeping a regular wake-up time helps set the body's circadian rhythm.",
    ],
    "glaciers": [
        "Glaciers form where more snow falls each winter than melts each summer.",
        "Glacial ice flows slowly downhill under its own weight.",
        "Glaciers carve U-shaped valleys and leave piles of rock called moraines.",
        "Most of the world's fresh water is stored in the ice sheets of Antarctica and Greenland.",
        "Retreating glaciers are one of the clearest signs of a warming climate.",
        "Icebergs break off, or calve, where glaciers meet the sea.",
    ],
    "git": [
        "Git stores a project's history as a graph of commits, each pointing to its parents.",
        "A Git branch is a movable pointer to a commit.",
        "git rebase replays commits on top of another branch to keep history linear.",
        "A merge conflict happens when two branches change the same lines differently.",
        "git bisect finds the commit that introduced a bug by binary search.",
        "The staging area lets you choose which changes go into the next commit.",
    ],
    "tea": [
        "Green, black and oolong teas all come from the leaves of Camellia sinensis.",
        "Black tea is fully oxidised, while green tea is heated early to stop oxidation.",
        "Green tea brews best with water around 75 to 80 degrees Celsius, below boiling.",
        "Matcha is green tea ground into a fine powder and whisked into water.",
        "Herbal infusions such as chamomile or peppermint contain no tea leaves at all.",
        "Steeping black tea too long releases tannins that make it bitter.",
    ],
}


def documents() -> list[dict[str, str]]:
    """Every document: id, topic and text (two facts of the topic)."""
    docs = []
    for topic, facts in TOPICS.items():
        for number, (a, b) in enumerate(itertools.combinations(range(len(facts)), 2)):
            docs.append({"id": f"{topic}-{number:02d}", "topic": topic, "text": f"{facts[a]} {facts[b]}"})
    return docs


def main() -> None:
    out = Path(__file__).with_name("corpus.jsonl")
    out.write_text("".join(json.dumps(doc) + "\n" for doc in documents()), encoding="utf-8")
    print(f"wrote {out.name}: {len(documents())} documents")


if __name__ == "__main__":
    main()
