"""What a rollback counts as a function of the application reaching what it drops (catalog/calls.py): a body that
reads a new column where it names its table too, or in a trigger function on the table; not a column of the same name
qualified by another table's alias; unsure (dynamic SQL, a body that does not parse) means it does."""

from __future__ import annotations

from pgconverge.catalog.calls import calls_function, reads_column
from pgconverge.catalog.model import Function
from pgconverge.config import QualifiedName

MEMBERS = QualifiedName("public", "project_members")


def _fn(body: str, language: str = "sql", args: str = "") -> Function:
    definition = (f"CREATE OR REPLACE FUNCTION public.f({args}) RETURNS boolean LANGUAGE {language} AS $function$"
                  f"{body}$function$")
    return Function(QualifiedName("public", "f"), "f()", args, "boolean", language, "s", False, (), body, definition)


def test_a_read_of_the_new_column_of_its_table():
    assert reads_column(_fn("select exists(select 1 from public.project_members pm where pm.user_id = auth.uid())"),
                        MEMBERS, "user_id")
    assert reads_column(_fn("select exists(select 1 from project_members where user_id = auth.uid())"),
                        MEMBERS, "user_id")


def test_a_column_of_that_name_in_another_table_is_not_a_read():
    fn = _fn("select exists(select 1 from basejump.account_user au where au.user_id = auth.uid())")
    assert not reads_column(fn, MEMBERS, "user_id")  # the table is not even named
    fn = _fn("select exists(select 1 from basejump.account_user au join public.project_members pm "
             "on pm.account_id = au.account_id where au.user_id = auth.uid())")
    assert not reads_column(fn, MEMBERS, "user_id")
    unqualified = _fn("select exists(select 1 from basejump.account_user join public.project_members pm "
                      "on pm.account_id = 1 where user_id = auth.uid())")
    assert reads_column(unqualified, MEMBERS, "user_id")  # which table's? unsure: yes


def test_a_trigger_function_on_the_table_and_dynamic_sql():
    trigger = _fn("begin new.user_id := coalesce(new.user_id, auth.uid()); return new; end", "plpgsql")
    assert reads_column(trigger, MEMBERS, "user_id", frozenset({MEMBERS}))
    assert not reads_column(trigger, MEMBERS, "user_id")  # on another table
    dynamic = _fn("begin execute 'select 1 from public.project_members where user_id = $1' using auth.uid(); "
                  "return true; end", "plpgsql")
    assert reads_column(dynamic, MEMBERS, "user_id")


def test_a_body_that_does_not_parse_counts_and_a_call_of_the_helper():
    assert reads_column(_fn("select from project_members pm where pm.user_id = ((("), MEMBERS, "user_id")
    helper = QualifiedName("basejump", "current_user_id")
    assert calls_function(_fn("select basejump.current_user_id() is not null"), helper)
    assert calls_function(_fn("select current_user_id() is not null"), helper)
    assert not calls_function(_fn("select other.current_user_id() is not null"), helper)
    assert not calls_function(_fn("declare current_user_id uuid; begin return current_user_id is null; end",
                                  "plpgsql"), helper)


def test_the_name_in_a_string_is_a_read_only_where_the_body_builds_sql():
    """A trigger function written to work with either owner column (`to_jsonb(new) ->> 'user_id'`) reads NULL once
    the column is gone: the name is data there. In SQL the body builds and EXECUTEs, it is a column again."""
    either = _fn("begin if to_jsonb(new) ->> 'user_id' is null then raise exception 'owner required'; end if; "
                 "return new; end", "plpgsql")
    assert not reads_column(either, MEMBERS, "user_id", frozenset({MEMBERS}))
    built = _fn("begin execute format('select %I from public.project_members', 'user_id'); return new; end",
                "plpgsql")
    assert reads_column(built, MEMBERS, "user_id", frozenset({MEMBERS}))
