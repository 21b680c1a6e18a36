"""Write the previous release's schema as SQL fixtures (run once, from a checkout of that release).

    python tests/data/schema_previous/make.py bdaf6f5

``schema.sql``: the release's ``sql/*.sql`` in the order its ``dreamcatcher init`` applied them.
``rules_default.sql``: what its init did next in Python (``install_default``): the default rule
set compiled by that release, its ``rule_sets`` row, and the default. Together they make the
database that release's ``dreamcatcher init`` made, without its code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
FILES = ("schema.sql", "merge.sql", "rules.sql", "timetravel.sql", "views.sql")


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def main(commit: str) -> None:
    parts = [subprocess.run(["git", "show", f"{commit}:sql/{name}"], check=True, capture_output=True,
                            text=True).stdout for name in FILES]
    header = f"-- sql/{{{','.join(FILES)}}} of commit {commit}, in the order its init applied them.\n"
    (HERE / "schema.sql").write_text(header + "\n".join(parts), encoding="utf-8")

    from dreamcatcher_pg.rules.compile import compile_rules  # the code of that commit
    from dreamcatcher_pg.rules.store import default_rules

    rules = default_rules()
    script = [
        f"-- the default rule set as commit {commit}'s init installed it (rules/store.install_default)",
        "SET standard_conforming_strings = on;",
        compile_rules(rules),
        "INSERT INTO dreamcatcher.rule_sets (id, tag, source, normalized, builtin) VALUES ("
        f"{lit(rules.id)}, {lit(rules.tag)}, {lit(rules.source)},"
        f" {lit(rules.normalized_json())}::jsonb, true)"
        " ON CONFLICT (id) DO NOTHING;",
        "INSERT INTO dreamcatcher.rule_defaults (only_row, rule_set) VALUES (true, "
        f"{lit(rules.id)}) ON CONFLICT (only_row) DO UPDATE SET rule_set = excluded.rule_set;",
    ]
    (HERE / "rules_default.sql").write_text("\n".join(script) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
