"""Keyword (BM25) queries: the topic words of a question, as SQLite FTS5 prefix terms."""

from __future__ import annotations

import re

# Words that say nothing about a question's topic (English and German, the languages of our test
# documents). In an OR query they would let chunks that are merely long outrank the right one.
ENGLISH_STOPWORDS = """
    a about above after again all also am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor not of off on once only or other
    our out over own same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom why will with would you
    your yours
"""
GERMAN_STOPWORDS = """
    aber alle allem allen aller alles als also am an ans auch auf aus bei beim bin bis bist da damit dann das
    dass dem den denn der des die dies diese diesem diesen dieser dieses doch dort du durch ein eine einem einen
    einer eines er es etwa für gibt hat hatte ich ihr im in ins ist ja jede jedem jeden jeder jedes kann kein
    keine können man mit muss nach nicht noch nur ob oder ohne sein seine sich sie sind so soll über um und uns
    unter vom von vor war warum was wann welche welchem welchen welcher welches wenn werden wer wie wieso wird
    wo wofür womit zu zum zur zwischen
"""
STOPWORDS = frozenset(ENGLISH_STOPWORDS.split() + GERMAN_STOPWORDS.split())


def keyword_terms(query: str) -> list[str]:
    """FTS5 terms for a question: topic words only, each as a prefix so inflections match too.

    Cutting two letters off longer words before the `*` lets "topologischen" find "topologischer"
    and "Räumen" find "Räume"; the porter tokenizer does the same for English on both sides.
    """
    terms = []
    for word in dict.fromkeys(w.lower() for w in re.findall(r"\w+", query)):
        if word in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        stem = word[: max(4, len(word) - 2)] if len(word) >= 6 else word
        terms.append('"' + stem.replace('"', '""') + '"' + ("*" if len(word) >= 6 else ""))
    return terms
