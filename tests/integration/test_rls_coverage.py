"""The switch's RLS equivalence check must look at something: tokens that miss a claim the policies read make
every identity see nothing, which proves nothing. The switch then refuses before it rewrites a policy, names the
claims the policies and helpers read, and the fix; with the right claims it passes with its coverage recorded."""

from __future__ import annotations

import psycopg

from _support import cli, schema_dump, write_config


def test_tokens_missing_the_policies_claim_prove_nothing_and_change_nothing(conn, fixture_db, tmp_path):
    wrong = write_config(tmp_path, '[migration]\nrls_sample = 20\ntoken_claims = { role = "customer" }\n')
    cli("run", "align", "--dsn", fixture_db, "--config", wrong)
    cli("run", "expand", "--dsn", fixture_db, "--config", wrong)
    before = [x for x in schema_dump(conn) if x.startswith("policy")]
    out = " ".join(cli("run", "switch", "--dsn", fixture_db, "--config", wrong, expect=2).split())
    assert "the RLS equivalence check proves nothing" in out, out
    assert "the policies and helpers read the claims" in out and "app_role" in out, out
    assert 'token_claims = { app_role = "…"' in out, out
    assert "no policy was rewritten" in out
    assert [x for x in schema_dump(conn) if x.startswith("policy")] == before
    snap = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                        "order by id desc limit 1").fetchone()[0]
    assert snap["proves_nothing"] and snap["coverage"]["owning"] > 0 and snap["coverage"]["seeing_own"] == 0

    right = write_config(tmp_path, '[migration]\nrls_sample = 20\ntoken_claims = { app_role = "customer" }\n')
    cli("run", "switch", "--dsn", fixture_db, "--config", right)
    snap = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                        "order by id desc limit 1").fetchone()[0]
    assert snap["coverage"]["share"] > 0.9, snap["coverage"]
    # `verify --rls` looks the same way: with tokens missing that claim it fails as proving nothing, after the switch
    # and after contract (where its tokens carry the canonical claim alone).
    (tmp_path / "wrong").mkdir()
    wrong = write_config(tmp_path / "wrong", '[migration]\nrls_sample = 20\ntoken_claims = { role = "customer" }\n')
    for phase in ("switch", "contract"):
        if phase == "contract":
            cli("run", "contract", "--accept-code-references", "--accept-runtime-use", "--dsn", fixture_db,
                "--config", right)
        out = " ".join(cli("verify", "--rls", "--dsn", fixture_db, "--config", right).split())
        assert "pass rls" in out and "proves nothing" not in out, out
        out = " ".join(cli("verify", "--rls", "--dsn", fixture_db, "--config", wrong, expect=1).split())
        assert "FAIL rls" in out and "proves nothing: of" in out and "saw any of them" in out, (phase, out)
        assert "app_role" in out, out


def test_verify_before_the_switch_also_fails_when_its_tokens_see_nothing(conn, fixture_db, tmp_path):
    wrong = write_config(tmp_path, '[migration]\nrls_sample = 20\ntoken_claims = { role = "customer" }\n')
    cli("run", "align", "--dsn", fixture_db, "--config", wrong)
    out = " ".join(cli("verify", "--rls", "--dsn", fixture_db, "--config", wrong, expect=1).split())
    assert "FAIL rls" in out and "proves nothing: of" in out and "with an old token" in out, out
