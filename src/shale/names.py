"""Docker-style random container names: adjective_scientist."""

from __future__ import annotations

import os

_LEFT = ("admiring adoring affectionate agitated amazing angry awesome beautiful blissful bold "
         "boring brave busy charming clever compassionate competent condescending confident "
         "cool cranky crazy dazzling determined distracted dreamy eager ecstatic elastic "
         "elated elegant eloquent epic exciting fervent festive flamboyant focused friendly "
         "frosty funny gallant gifted goofy gracious great happy hardcore heuristic hopeful "
         "hungry infallible inspiring intelligent interesting jolly jovial keen kind laughing "
         "loving lucid magical modest musing mystifying naughty nervous nice nifty nostalgic "
         "objective optimistic peaceful pedantic pensive practical priceless quirky quizzical "
         "recursing relaxed reverent romantic sad serene sharp silly sleepy stoic strange "
         "stupefied suspicious sweet tender thirsty trusting unruffled upbeat vibrant vigilant "
         "vigorous wizardly wonderful xenodochial youthful zealous zen").split()
_RIGHT = ("agnesi albattani allen almeida archimedes ardinghelli aryabhata austin babbage "
          "banach bardeen bartik bassi bell bhabha bhaskara blackwell bohr booth borg bose "
          "brahmagupta brattain brown carson chandrasekhar chatelet chaum cohen cori cray "
          "curie darwin davinci dijkstra dirac driscoll dubinsky easley edison einstein "
          "elion engelbart euclid euler faraday fermat fermi feynman franklin galileo gates "
          "goldberg goldstine goldwasser golick goodall hamilton hawking heisenberg hermann "
          "hodgkin hoover hopper hugle hypatia jackson jang jennings jepsen johnson joliot "
          "jones kalam kapitsa keller kepler khorana kilby kirch knuth kowalevski lalande "
          "lamarr lamport leakey leavitt lewin lichterman liskov lovelace lumiere mahavira "
          "mayer mccarthy mcclintock mclean mcnulty meitner mendel mendeleev merkle mestorf "
          "mirzakhani montalcini moore morse murdock napier nash neumann newton nightingale "
          "nobel noether northcutt noyce panini pare pascal pasteur payne perlman pike "
          "poincare poitras ptolemy raman ramanujan ride ritchie robinson roentgen rosalind "
          "rubin saha sammet shannon shaw shirley shockley sinoussi snyder spence stonebraker "
          "sutherland swanson swartz swirles tesla tharp thompson torvalds turing varahamihira "
          "villani visvesvaraya volhard wescoff wilbur wiles williams wilson wing wozniak "
          "wright wu yalow yonath zhukovsky").split()


def _pick(items: list[str]) -> str:
    # os.urandom, not secrets/random: those imports cost milliseconds on every `run`
    return items[int.from_bytes(os.urandom(4), "big") % len(items)]


def random_name() -> str:
    name = f"{_pick(_LEFT)}_{_pick(_RIGHT)}"
    return "focused_turing" if name == "boring_wozniak" else name  # docker's one exception
