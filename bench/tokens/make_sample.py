#!/usr/bin/env python3
"""Writes sample.jsonl: the fixed text set the token-estimate benchmark measures.

Run once; sample.jsonl is the committed artifact (re-running it later picks code/markdown chunks from the
project's files as they are then, so the set would change). Categories:

- prose_en, chat, de, fr, cjk: written by hand for this benchmark;
- numbers, urls, json: generated here with a fixed seed;
- code, markdown: chunks of this project's own source files and README.
"""

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
rng = random.Random(20260101)

PROSE_EN = [
    "The quick brown fox jumps over the lazy dog.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Service virtualization lets a team test against a stand-in for a dependency that is slow, expensive or not yet built.",
    "The committee met on Tuesday to review the budget. After a long discussion, members agreed to postpone the vote until the auditors had finished their report, which is expected early next month.",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, carbon dioxide and water are combined to form glucose, and oxygen is released as a by-product.",
    "When the river flooded in the spring of 1927, thousands of families lost their homes. The disaster reshaped the politics of the region for a generation and led to the first large federal flood-control program.",
    "Please note that the office will be closed on Monday for the public holiday. Urgent requests can be sent to the on-call engineer, whose number is listed on the intranet.",
    "A good abstraction hides the details that change often and exposes the ones that don't.",
    "Researchers at the university found that participants who slept fewer than six hours a night performed significantly worse on memory tasks, even when they reported feeling rested.",
    "Our quarterly revenue grew by twelve percent, driven mainly by strong demand in the enterprise segment. Operating costs remained flat, and we expect margins to improve further in the second half of the year.",
    "Once upon a time, in a kingdom by the sea, there lived a lighthouse keeper who had never seen a ship. Every night he lit the lamp anyway, because that was the job, and because someone, someday, might need it.",
    "Large language models predict the next token given the previous ones. Tokens are usually pieces of words, so a long or rare word may be split into several tokens while a common one fits in a single token.",
    "The mitochondria is often called the powerhouse of the cell.",
    "Despite the rain, the marathon went ahead as planned. More than twenty thousand runners crossed the finish line, and the winner set a new course record of two hours, four minutes and eleven seconds.",
    "I think the main problem with the proposal is that it assumes users will read the documentation. In my experience, most of them don't, so the defaults have to be safe on their own.",
    "Incomprehensibility, counterintuitively, characterizes many institutionalized bureaucratic procedures.",
    "The patient presented with acute abdominal pain, nausea and a low-grade fever. Laboratory results showed elevated white blood cell counts, and an ultrasound confirmed appendicitis.",
    "Shakespeare's plays have been translated into every major language and are performed more often than those of any other playwright.",
    "To reset your password, click the link in the email we just sent you. The link expires after 24 hours. If you did not request a reset, you can safely ignore this message.",
    "The new bridge, which spans nearly two kilometres, was built in just under three years and is designed to withstand earthquakes of magnitude eight.",
    "Every morning she walked the dog along the canal, past the bakery and the old brewery, and every morning the baker waved.",
    "Cryptographic hash functions map data of arbitrary size to a fixed-size digest. A good one is fast to compute, hard to invert, and makes collisions practically impossible to find.",
    "Terms and conditions: this offer is valid for new customers only, cannot be combined with any other promotion, and may be withdrawn at any time without notice.",
    "He hadn't expected the interview to go so well; they'd even asked when he could start.",
    "The orchestra's performance of Mahler's Fifth Symphony was greeted with a standing ovation that lasted almost ten minutes.",
    "Climate scientists warn that without significant reductions in greenhouse-gas emissions, average global temperatures could rise by more than two degrees Celsius before the end of the century, with severe consequences for agriculture, coastal cities and biodiversity.",
    "Thanks for your patience while we looked into this. The issue was caused by a misconfigured load balancer, which has now been fixed. We're sorry for the inconvenience.",
    "Neuroplasticity, the brain's ability to reorganize itself by forming new neural connections, continues throughout life.",
    "The recipe calls for two cups of flour, one teaspoon of baking soda, a pinch of salt, half a cup of butter and three ripe bananas, mashed.",
    "Antidisestablishmentarianism is frequently cited as one of the longest words in the English language.",
    "In 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin spent about two and a half hours outside the lunar module, collecting samples and setting up experiments, while Michael Collins orbited above.",
    "A monad is just a monoid in the category of endofunctors, what's the problem?",
    "The library is open from nine to five on weekdays and from ten to two on Saturdays. Books may be borrowed for three weeks and renewed twice online.",
    "Honestly, I don't know. Maybe we should ask someone who actually knows what they're talking about.",
    "Visibility was poor, the wind had picked up, and the guide decided it would be safer to turn back before reaching the summit. Nobody argued.",
]

CHAT = [
    "What's the capital of France?",
    "Summarize the following article in three bullet points.",
    "You are a helpful assistant. Answer concisely and cite your sources when possible.",
    "Translate 'Where is the train station?' into Spanish, Italian and Portuguese.",
    "Write a haiku about autumn leaves.",
    "Can you explain the difference between a process and a thread, with an example?",
    "Fix the bug in this function: it should return the sum of the even numbers but it returns 0.",
    "I have a meeting with my manager tomorrow about a raise. How should I prepare?",
    "You are a customer-support agent for Acme Corp. Be polite, never promise refunds, and escalate to a human if the customer mentions legal action.",
    "Give me 5 name ideas for a coffee shop that is also a bookstore.",
    "Classify the sentiment of this review as positive, negative or neutral: \"The food was fine but the service was painfully slow.\"",
    "Extract all the dates and amounts from the invoice below and return them as JSON.",
    "What is 17 * 23? Show your work.",
    "Explain quantum entanglement to a ten-year-old.",
    "Rewrite this email so it sounds more professional:\n\nhey, the report is late again, can u send it today? thx",
    "Is it safe to eat raw cookie dough?",
    "You are an expert SQL developer. Given the schema below, write a query that returns the top 10 customers by total order value in 2024.",
    "hi",
    "Thanks! That worked.",
    "Generate a regular expression that matches US phone numbers like (555) 123-4567 or 555-123-4567.",
    "What are the pros and cons of microservices compared to a monolith? Keep it under 200 words.",
    "Act as a Linux terminal. I will type commands and you will reply with what the terminal should show. My first command is pwd.",
    "Please proofread: Their going to the park tomorow, weather or not it rains.",
    "Plan a 3-day itinerary for Lisbon for a family with two kids, including one rainy-day option.",
    "What's the weather in Oslo?",
    "Compare Python's asyncio with threads for I/O-bound workloads. When would you pick each?",
    "Return only valid JSON with the keys \"name\", \"age\" and \"email\" for the following person: Jane Doe, 34, jane.doe@example.com",
    "You are a strict grader. Score the student's answer from 0 to 10 and explain the score in one sentence.\n\nQuestion: Why is the sky blue?\nAnswer: Because it reflects the ocean.",
    "Tell me a joke about programmers.",
    "Continue the story: The door creaked open, and for the first time in forty years, someone stepped into the abandoned observatory.",
]

GERMAN = [
    "Guten Morgen! Wie geht es Ihnen heute?",
    "Die Geschwindigkeitsbegrenzung auf der Autobahn wird seit Jahren kontrovers diskutiert.",
    "Bitte beachten Sie, dass das Büro am Montag wegen des Feiertags geschlossen bleibt. Dringende Anfragen richten Sie bitte an den Bereitschaftsdienst.",
    "Die Bundesregierung hat am Mittwoch ein umfangreiches Maßnahmenpaket zur Entlastung der Bürgerinnen und Bürger beschlossen, das unter anderem einen Zuschuss zu den Heizkosten vorsieht.",
    "Ich hätte gern zwei Brötchen und einen Kaffee, bitte.",
    "Donaudampfschifffahrtsgesellschaftskapitän ist ein berühmtes Beispiel für die Bildung langer Komposita im Deutschen.",
    "Der Zug nach München hat voraussichtlich zwanzig Minuten Verspätung. Wir bitten um Ihr Verständnis.",
    "Künstliche Intelligenz verändert die Arbeitswelt grundlegend: Routineaufgaben werden automatisiert, während neue Berufsfelder entstehen, für die es bisher kaum Ausbildungswege gibt.",
    "Können Sie mir erklären, wie ich meine Steuererklärung elektronisch einreiche?",
    "Es war einmal ein kleines Mädchen, das mit seiner Großmutter am Rande eines großen, dunklen Waldes lebte.",
    "Die Datenschutz-Grundverordnung (DSGVO) regelt die Verarbeitung personenbezogener Daten durch Unternehmen und Behörden in der Europäischen Union.",
    "Übermorgen früh fahren wir für eine Woche an die Ostsee.",
    "Die Wärmepumpe nutzt die Umgebungswärme aus Luft, Wasser oder Erdreich und ist deshalb besonders effizient, wenn das Gebäude gut gedämmt ist.",
    "Vielen Dank für Ihre schnelle Rückmeldung! Wir melden uns bis spätestens Freitag mit einem Angebot.",
    "Fußgänger müssen an dieser Kreuzung auf das grüne Signal warten, auch wenn kein Auto zu sehen ist.",
]

FRENCH = [
    "Bonjour, je voudrais réserver une table pour deux personnes ce soir à vingt heures.",
    "Le gouvernement a annoncé mercredi une série de mesures destinées à soutenir le pouvoir d'achat des ménages les plus modestes.",
    "Où se trouve la gare la plus proche, s'il vous plaît ?",
    "La Révolution française a profondément transformé la société, en abolissant les privilèges et en proclamant l'égalité des citoyens devant la loi.",
    "Merci beaucoup pour votre aide ; je n'aurais pas pu terminer ce projet sans vous.",
    "L'intelligence artificielle soulève des questions éthiques importantes, notamment en matière de protection des données personnelles et de responsabilité juridique.",
    "Il était une fois, dans un petit village de Provence, un boulanger qui se levait chaque nuit à trois heures pour préparer le pain.",
    "Veuillez trouver ci-joint la facture correspondant à votre commande du 12 mars. Le paiement est attendu sous trente jours.",
    "Anticonstitutionnellement est souvent cité comme l'un des mots les plus longs de la langue française.",
    "Les élèves devront rendre leur dissertation avant vendredi ; aucun retard ne sera accepté.",
    "Qu'est-ce que tu fais ce week-end ? On pourrait aller au cinéma ou faire une randonnée si le temps le permet.",
    "La tour Eiffel, construite pour l'Exposition universelle de 1889, mesure environ trois cent trente mètres de hauteur.",
    "Nous regrettons de vous informer que votre vol a été annulé en raison des conditions météorologiques.",
    "Le chat dort sur le canapé depuis ce matin.",
    "Pour réinitialiser votre mot de passe, cliquez sur le lien que nous venons de vous envoyer par courriel. Ce lien expire au bout de vingt-quatre heures.",
]

CJK = [
    "你好，世界！",
    "今天天气很好，我们去公园散步吧。",
    "人工智能正在深刻地改变我们的生活和工作方式，从医疗诊断到自动驾驶，应用范围越来越广。",
    "请问最近的地铁站在哪里？",
    "这家餐厅的菜很好吃，但是服务有点慢，价格也比较贵。",
    "北京是中华人民共和国的首都，也是全国的政治、文化和国际交往中心。",
    "我们公司第三季度的营业收入同比增长了百分之十二，主要得益于企业客户需求的强劲增长。",
    "こんにちは、元気ですか？",
    "東京は日本の首都で、世界でも有数の大都市です。",
    "明日の会議は午前十時から第二会議室で行います。資料は事前に共有フォルダにアップロードしておいてください。",
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。",
    "このアプリを使うと、毎日の支出を簡単に記録して、月ごとの予算を管理できます。",
    "ラーメンとカレーライス、どちらが好きですか？",
    "안녕하세요, 만나서 반갑습니다.",
    "서울은 대한민국의 수도이며 인구가 약 천만 명에 이릅니다.",
    "내일 회의는 오전 열 시에 시작합니다. 늦지 않도록 해 주세요.",
    "인공지능 기술은 의료, 교육, 금융 등 다양한 분야에서 빠르게 발전하고 있습니다.",
    "이 식당은 음식이 맛있지만 가격이 조금 비쌉니다.",
]

CODE_EXTRA = [
    "SELECT c.id, c.name, SUM(o.total) AS revenue\nFROM customers c\nJOIN orders o ON o.customer_id = c.id\nWHERE o.created_at >= '2024-01-01' AND o.created_at < '2025-01-01'\nGROUP BY c.id, c.name\nORDER BY revenue DESC\nLIMIT 10;",
    "function debounce(fn, ms) {\n  let timer;\n  return (...args) => {\n    clearTimeout(timer);\n    timer = setTimeout(() => fn.apply(this, args), ms);\n  };\n}\n\nexport default debounce;",
    "import React, { useState, useEffect } from 'react';\n\nexport function UserList({ apiUrl }) {\n  const [users, setUsers] = useState([]);\n  useEffect(() => {\n    fetch(`${apiUrl}/users`).then((r) => r.json()).then(setUsers);\n  }, [apiUrl]);\n  return <ul>{users.map((u) => <li key={u.id}>{u.name}</li>)}</ul>;\n}",
    "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n\nfunc handler(w http.ResponseWriter, r *http.Request) {\n\tfmt.Fprintf(w, \"Hello, %s!\", r.URL.Path[1:])\n}\n\nfunc main() {\n\thttp.HandleFunc(\"/\", handler)\n\thttp.ListenAndServe(\":8080\", nil)\n}",
    "public class Fibonacci {\n    public static long fib(int n) {\n        if (n < 2) return n;\n        long a = 0, b = 1;\n        for (int i = 2; i <= n; i++) {\n            long t = a + b;\n            a = b;\n            b = t;\n        }\n        return b;\n    }\n}",
    "#include <stdio.h>\n#include <stdlib.h>\n\nint main(int argc, char **argv) {\n    if (argc < 2) {\n        fprintf(stderr, \"usage: %s N\\n\", argv[0]);\n        return 1;\n    }\n    int n = atoi(argv[1]);\n    for (int i = 0; i < n; i++) printf(\"%d\\n\", i * i);\n    return 0;\n}",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.27\n          ports:\n            - containerPort: 80",
    "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot, *rest = xs\n    return quicksort([x for x in rest if x < pivot]) + [pivot] + quicksort([x for x in rest if x >= pivot])",
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  <title>Dashboard</title>\n  <link rel=\"stylesheet\" href=\"/static/main.css\">\n</head>\n<body>\n  <div id=\"app\" class=\"container mx-auto p-4\"></div>\n  <script src=\"/static/app.js\" defer></script>\n</body>\n</html>",
    "$ kubectl get pods -n production --field-selector=status.phase!=Running -o wide",
]


def numbers():
    out = []
    for i in range(15):
        kind = i % 5
        if kind == 0:
            out.append(", ".join(str(rng.randint(0, 10**rng.randint(1, 9))) for _ in range(rng.randint(5, 30))))
        elif kind == 1:
            out.append(" ".join(f"{rng.uniform(-1000, 1000):.{rng.randint(1, 6)}f}" for _ in range(rng.randint(5, 25))))
        elif kind == 2:
            rows = ["date,open,high,low,close,volume"]
            for d in range(rng.randint(4, 12)):
                o = rng.uniform(90, 110)
                rows.append(
                    f"2024-03-{d + 1:02d},{o:.2f},{o + rng.uniform(0, 3):.2f},{o - rng.uniform(0, 3):.2f},"
                    f"{o + rng.uniform(-2, 2):.2f},{rng.randint(10000, 5000000)}"
                )
            out.append("\n".join(rows))
        elif kind == 3:
            out.append(
                f"Invoice #{rng.randint(10000, 99999)} dated {rng.randint(1, 28)}/{rng.randint(1, 12)}/2024: "
                f"{rng.randint(1, 40)} units at ${rng.uniform(1, 500):.2f} each, tax {rng.randint(5, 25)}%, "
                f"total ${rng.uniform(100, 20000):,.2f}. Call +1 ({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}."
            )
        else:
            out.append(" ".join(f"{rng.getrandbits(128):032x}"[: rng.choice([8, 12, 32])] for _ in range(rng.randint(3, 10))))
    return out


def urls():
    hosts = ["example.com", "api.github.com", "docs.python.org", "en.wikipedia.org", "storage.googleapis.com",
             "www.amazon.de", "news.ycombinator.com", "cdn.jsdelivr.net", "login.microsoftonline.com", "localhost:8080"]
    words = ["users", "v1", "api", "search", "wiki", "Tokenization", "repos", "issues", "static", "images", "en",
             "3", "library", "asyncio-task", "html", "products", "oauth2", "authorize", "item", "download"]
    out = []
    for i in range(12):
        path = "/".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        url = f"https://{rng.choice(hosts)}/{path}"
        if i % 2 == 0:
            q = "&".join(f"{rng.choice(['q', 'id', 'page', 'utm_source', 'redirect_uri', 'lang'])}={rng.choice(['en', '42', 'newsletter', 'https%3A%2F%2Fapp.example.com%2Fcb', 'rust+wasm', str(rng.randint(1, 10**6))])}"
                         for _ in range(rng.randint(1, 4)))
            url += "?" + q
        if i % 3 == 0:
            url = f"See {url} for details, or mail support@{rng.choice(hosts).split(':')[0]}."
        out.append(url)
    out.append("git clone git@github.com:understudy-dev/understudy.git && cd understudy && make test")
    out.append("<https://example.org/a/b?c=d#frag> [docs](https://docs.example.com/guide/getting-started#install)")
    out.append("s3://my-bucket/logs/2024/03/17/app-7f9c2d.log.gz ftp://ftp.example.net/pub/README file:///etc/hosts")
    return out


def json_texts():
    out = []
    firsts = ["Alice", "Bob", "Chen", "Dmitri", "Eva", "Fatima", "Giulia", "Hiro"]
    for i in range(10):
        obj = {
            "id": rng.randint(1, 10**6),
            "name": rng.choice(firsts) + " " + rng.choice(["Smith", "Müller", "Wang", "Rossi", "Tanaka"]),
            "email": f"user{rng.randint(1, 999)}@example.com",
            "active": rng.random() < 0.5,
            "score": round(rng.uniform(0, 100), 2),
            "tags": rng.sample(["admin", "beta", "vip", "trial", "eu", "us"], rng.randint(0, 4)),
        }
        if i % 2:
            obj["address"] = {"street": f"{rng.randint(1, 200)} Main St", "city": "Springfield", "zip": f"{rng.randint(10000, 99999)}"}
        if i % 3 == 0:
            out.append(json.dumps([obj, dict(obj, id=obj["id"] + 1)], indent=2, ensure_ascii=False))
        else:
            out.append(json.dumps(obj, ensure_ascii=False, separators=(",", ":") if i % 2 else (", ", ": ")))
    for path in ["examples/assets/openai/chat-capital.json", "examples/assets/openai/chat-weather-tool.json",
                 "examples/assets/anthropic/messages-haiku.json", "tests/e2e/assets/chat-cafe.json"]:
        p = os.path.join(ROOT, path)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                out.append(f.read()[:1800])
    out.append(json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": "You are terse."},
                                                           {"role": "user", "content": "List three primes."}],
                           "temperature": 0.2, "max_tokens": 64}))
    out.append(json.dumps({"type": "function", "function": {"name": "search_flights", "description": "Search flights between two airports",
                                                             "parameters": {"type": "object", "properties": {
                                                                 "from": {"type": "string", "description": "IATA code"},
                                                                 "to": {"type": "string", "description": "IATA code"},
                                                                 "date": {"type": "string", "format": "date"}},
                                                                 "required": ["from", "to"]}}}, indent=2))
    return out


def chunks(path, n, max_chars):
    """n chunks of whole lines, up to max_chars each, spread over the file."""
    p = os.path.join(ROOT, path)
    if not os.path.exists(p):
        return []
    with open(p, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for k in range(n):
        start = (len(lines) * k) // n
        buf = []
        size = 0
        for line in lines[start:]:
            if size + len(line) > max_chars and buf:
                break
            buf.append(line)
            size += len(line) + 1
        text = "\n".join(buf).strip()
        if text:
            out.append(text)
    return out


def code():
    out = []
    for path, n in [("matcher/src/template.rs", 4), ("matcher/src/runtime.rs", 4), ("matcher/src/dialect.rs", 3),
                    ("filter/src/flow.rs", 3), ("cli/src/main.rs", 3), ("tests/e2e/conftest.py", 3),
                    ("tests/e2e/test_hits.py", 2), ("scripts/setup.sh", 2), ("scripts/wasi-runner.mjs", 1),
                    ("envoy/understudy.yaml", 2), ("Makefile", 1)]:
        out += chunks(path, n, rng.choice([300, 600, 1200]))
    return out + CODE_EXTRA


def markdown():
    return chunks("README.md", 12, 900)


def main():
    cats = [("prose_en", PROSE_EN), ("chat", CHAT), ("de", GERMAN), ("fr", FRENCH), ("cjk", CJK),
            ("numbers", numbers()), ("urls", urls()), ("json", json_texts()), ("code", code()), ("markdown", markdown())]
    n = 0
    with open(os.path.join(HERE, "sample.jsonl"), "w", encoding="utf-8") as f:
        for cat, texts in cats:
            for t in texts:
                f.write(json.dumps({"id": n, "category": cat, "text": t}, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} texts", file=sys.stderr)


if __name__ == "__main__":
    main()
