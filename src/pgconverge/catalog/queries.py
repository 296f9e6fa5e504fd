"""Catalog queries. They run with search_path = pg_catalog so every name they print is schema-qualified."""

RELATION_OID = """
select c.oid, c.relkind
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where n.nspname = %(schema)s and c.relname = %(name)s
"""

TABLES = """
select c.oid, n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
       pg_get_userbyid(c.relowner), greatest(c.reltuples, 0)::bigint
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.oid = any(%(oids)s)
"""

# A column's own privileges (GRANT SELECT (col) …) as [grantee, privilege, with grant option].
COLUMNS = """
select a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '', a.attidentity <> '', a.attnum,
       coalesce((select json_agg(json_build_array(x.who, x.privilege_type, x.is_grantable)
                                 order by x.who, x.privilege_type, x.is_grantable)
                 from (select case when e.grantee = 0 then 'PUBLIC' else pg_get_userbyid(e.grantee) end as who,
                              e.privilege_type, e.is_grantable from aclexplode(a.attacl) e) x), '[]'),
       (with recursive d(base, mod, depth) as (
          select t.typbasetype, t.typtypmod, 0 from pg_type t where t.oid = a.atttypid and t.typtype = 'd'
          union all
          select t.typbasetype, t.typtypmod, d.depth + 1 from d join pg_type t on t.oid = d.base and t.typtype = 'd')
        select format_type(d.base, d.mod) from d order by d.depth desc limit 1),
       col_description(a.attrelid, a.attnum),
       (select quote_ident(cn.nspname) || '.' || quote_ident(co.collname) from pg_collation co
        join pg_namespace cn on cn.oid = co.collnamespace
        where co.oid = a.attcollation and a.attcollation <> 'pg_catalog."default"'::regcollation)
from pg_attribute a
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where a.attrelid = any(%(oids)s) and a.attnum > 0 and not a.attisdropped
order by a.attrelid, a.attnum
"""

INDEXES = """
select i.indrelid, n.nspname, ic.relname, tn.nspname, tc.relname,
       array(select case when k.attnum = 0 then null else
                   (select attname from pg_attribute where attrelid = i.indrelid and attnum = k.attnum) end
             from unnest(i.indkey::int2[]) with ordinality as k(attnum, ord) order by k.ord) as cols,
       pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary, i.indisvalid,
       pg_get_expr(i.indpred, i.indrelid), am.amname, obj_description(i.indexrelid, 'pg_class')
from pg_index i
join pg_class ic on ic.oid = i.indexrelid
join pg_namespace n on n.oid = ic.relnamespace
join pg_class tc on tc.oid = i.indrelid
join pg_namespace tn on tn.oid = tc.relnamespace
join pg_am am on am.oid = ic.relam
where i.indrelid = any(%(oids)s)
order by ic.relname
"""

# Constraints on the given tables (p, u, f) plus foreign keys *referencing* them.
CONSTRAINTS = """
select con.conrelid, con.conname, con.contype,
       array(select a.attname from unnest(con.conkey) with ordinality as k(attnum, ord)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum order by k.ord),
       tn.nspname, tc.relname, con.confrelid, fn.nspname, fc.relname,
       array(select a.attname from unnest(con.confkey) with ordinality as k(attnum, ord)
             join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.attnum order by k.ord),
       con.confdeltype, con.confupdtype, con.convalidated, con.condeferrable, pg_get_constraintdef(con.oid),
       obj_description(con.oid, 'pg_constraint')
from pg_constraint con
join pg_class tc on tc.oid = con.conrelid
join pg_namespace tn on tn.oid = tc.relnamespace
left join pg_class fc on fc.oid = con.confrelid
left join pg_namespace fn on fn.oid = fc.relnamespace
where con.contype in ('p', 'u', 'f')
  and (con.conrelid = any(%(oids)s) or (con.contype = 'f' and con.confrelid = any(%(oids)s)))
order by con.conname
"""

TRIGGERS = """
select t.tgrelid, t.tgname, pn.nspname, p.proname, pg_get_triggerdef(t.oid), t.tgenabled
from pg_trigger t
join pg_proc p on p.oid = t.tgfoid
join pg_namespace pn on pn.oid = p.pronamespace
where not t.tgisinternal and t.tgrelid = any(%(oids)s)
order by t.tgname
"""

# Rewrite rules of tables (a view's own _RETURN rule aside); ev_type 1 SELECT, 2 UPDATE, 3 INSERT, 4 DELETE.
RULES = """
select r.ev_class, r.rulename, r.ev_type, r.is_instead, pg_get_ruledef(r.oid), r.ev_enabled
from pg_rewrite r
where r.ev_class = any(%(oids)s) and r.rulename <> '_RETURN'
order by r.rulename
"""

POLICIES = """
select pol.oid, n.nspname, c.relname, c.oid, pol.polname, pol.polcmd, pol.polpermissive,
       case when pol.polroles = '{0}' then array['public']::text[]
            else array(select rolname::text from pg_roles where oid = any(pol.polroles) order by rolname) end,
       pg_get_expr(pol.polqual, pol.polrelid), pg_get_expr(pol.polwithcheck, pol.polrelid)
from pg_policy pol
join pg_class c on c.oid = pol.polrelid
join pg_namespace n on n.oid = c.relnamespace
order by n.nspname, c.relname, pol.polname
"""

# What Postgres recorded that an object's expressions use: columns (with their table) and functions.
# For policies and views this covers sub-queries too, because the whole expression tree is walked.
DEPENDENCIES = """
select d.objid, rn.nspname, rc.relname, ra.attname,
       case when d.refclassid = 'pg_proc'::regclass then d.refobjid::regprocedure::text end
from pg_depend d
left join pg_class rc on d.refclassid = 'pg_class'::regclass and rc.oid = d.refobjid
left join pg_namespace rn on rn.oid = rc.relnamespace
left join pg_attribute ra on ra.attrelid = rc.oid and ra.attnum = d.refobjsubid and d.refobjsubid > 0
where d.classid = %(classid)s::regclass and d.objid = any(%(objids)s)
"""

# Views and materialized views reading one of %(oids)s, and the views reading those, and so on.
VIEWS_USING = """
with recursive used(oid) as (
  select r.ev_class
  from pg_depend d
  join pg_rewrite r on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
  join pg_class vc on vc.oid = r.ev_class
  where d.refclassid = 'pg_class'::regclass and d.refobjid = any(%(oids)s)
    and vc.oid <> d.refobjid and vc.relkind in ('v', 'm')
  union
  select r.ev_class
  from used u
  join pg_depend d on d.refclassid = 'pg_class'::regclass and d.refobjid = u.oid
                  and d.classid = 'pg_rewrite'::regclass
  join pg_rewrite r on r.oid = d.objid
  join pg_class vc on vc.oid = r.ev_class
  where vc.oid <> u.oid and vc.relkind in ('v', 'm')
)
select vc.oid, vn.nspname, vc.relname, vc.relkind, pg_get_viewdef(vc.oid)
from used u
join pg_class vc on vc.oid = u.oid
join pg_namespace vn on vn.oid = vc.relnamespace
"""

# Every table or view each view reads, whichever of its columns (a count(*) records the table alone).
VIEW_RELATION_REFS = """
select distinct r.ev_class, rn.nspname, rc.relname
from pg_depend d
join pg_rewrite r on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
join pg_class rc on d.refclassid = 'pg_class'::regclass and rc.oid = d.refobjid
join pg_namespace rn on rn.oid = rc.relnamespace
where r.ev_class = any(%(oids)s) and rc.oid <> r.ev_class
"""

VIEW_COLUMN_REFS = """
select r.ev_class, rn.nspname, rc.relname, ra.attname
from pg_depend d
join pg_rewrite r on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
join pg_class rc on d.refclassid = 'pg_class'::regclass and rc.oid = d.refobjid
join pg_namespace rn on rn.oid = rc.relnamespace
join pg_attribute ra on ra.attrelid = rc.oid and ra.attnum = d.refobjsubid
where r.ev_class = any(%(oids)s) and d.refobjsubid > 0 and rc.oid <> r.ev_class
"""

# A function p whose code matches %(pattern)s: its source, or for an SQL-standard body (BEGIN ATOMIC or RETURN,
# Postgres 14 and later), which leaves prosrc empty, its definition (Function.code then narrows it to the body).
_CODE_MATCHES = """(p.prosrc ~* %(pattern)s
       or (p.prosrc = '' and p.prokind in ('f', 'p') and pg_get_functiondef(p.oid) ~* %(pattern)s))"""

# User functions (not part of an extension) that are a named helper or whose source matches a pattern.
FUNCTIONS = """
select p.oid, n.nspname, p.proname, p.oid::regprocedure::text, pg_get_function_identity_arguments(p.oid),
       pg_get_function_result(p.oid), l.lanname, p.provolatile, p.prosecdef,
       coalesce(p.proconfig, '{}'::text[]), p.prosrc,
       case when p.prokind in ('f', 'p') then pg_get_functiondef(p.oid) else '' end, pg_get_userbyid(p.proowner)
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_language l on l.oid = p.prolang
where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%%'
  and l.lanname not in ('c', 'internal')
  and not exists (select 1 from pg_depend e where e.classid = 'pg_proc'::regclass and e.objid = p.oid
                  and e.deptype = 'e')
  and ((n.nspname, p.proname) in (select * from unnest(%(helper_schemas)s::text[], %(helper_names)s::text[]))
       or """ + _CODE_MATCHES + """)
order by n.nspname, p.proname, p.oid
"""

# User functions (not part of an extension) outside SKIP schemas and the OIDS given, whose code matches a pattern:
# those a rollback checks against what it drops. Each with the tables whose triggers run it (and their ancestors).
FUNCTIONS_MATCHING = """
select p.oid, n.nspname, p.proname, p.oid::regprocedure::text, pg_get_function_identity_arguments(p.oid),
       pg_get_function_result(p.oid), l.lanname, p.provolatile, p.prosecdef,
       coalesce(p.proconfig, '{}'::text[]), p.prosrc,
       case when p.prokind in ('f', 'p') then pg_get_functiondef(p.oid) else '' end, pg_get_userbyid(p.proowner),
       array(select array[tn.nspname::text, tc.relname::text] from pg_trigger t
             join pg_class c on c.oid = t.tgrelid
             join pg_class tc on tc.oid = c.oid or tc.oid in (select relid from pg_partition_ancestors(c.oid))
             join pg_namespace tn on tn.oid = tc.relnamespace
             where t.tgfoid = p.oid and not t.tgisinternal)
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_language l on l.oid = p.prolang
where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%%'
  and n.nspname <> all(%(skip)s::text[]) and p.oid <> all(%(oids)s::oid[])
  and l.lanname not in ('c', 'internal') and p.prokind in ('f', 'p')
  and not exists (select 1 from pg_depend e where e.classid = 'pg_proc'::regclass and e.objid = p.oid
                  and e.deptype = 'e')
  and """ + _CODE_MATCHES + """
order by n.nspname, p.proname, p.oid
"""

# What the catalog reads of a function (catalog/introspect.py builds a Function of each row).
_FUNCTION_COLUMNS = """
select p.oid, n.nspname, p.proname, p.oid::regprocedure::text, pg_get_function_identity_arguments(p.oid),
       pg_get_function_result(p.oid), l.lanname, p.provolatile, p.prosecdef,
       coalesce(p.proconfig, '{}'::text[]), p.prosrc,
       case when p.prokind = 'f' then pg_get_functiondef(p.oid) else '' end, pg_get_userbyid(p.proowner)
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_language l on l.oid = p.prolang
"""
# User functions by name: schema-qualified names, and bare names in any schema (the caller resolves them).
FUNCTIONS_NAMED = _FUNCTION_COLUMNS + """
where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%%'
  and l.lanname in ('sql', 'plpgsql') and p.prokind = 'f'
  and ((n.nspname, p.proname) in (select * from unnest(%(schemas)s::text[], %(names)s::text[]))
       or p.proname = any(%(bare)s::text[]))
order by n.nspname, p.proname, p.oid
"""

# The same columns, by oid and in any language (a policy may call a C or plv8 function).
FUNCTIONS_BY_OID = _FUNCTION_COLUMNS + """
where p.oid = any(%(oids)s::oid[]) and p.prokind = 'f'
order by n.nspname, p.proname, p.oid
"""

# Roles by their names as written in pgconverge.toml (unquoted), tables by schema and name (the caller quotes).
TABLE_GRANTS = """
select n.nspname, c.relname, case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
       a.privilege_type, a.is_grantable
from pg_class c join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) a
where c.oid = any(%(oids)s)
order by 1, 2, 3, 4
"""

# Privileges on the sequences the given tables' columns own (serial, identity): they move with their table.
OWNED_SEQUENCE_GRANTS = """
select n.nspname, c.relname, case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
       a.privilege_type, a.is_grantable
from pg_depend d join pg_class c on c.oid = d.objid and c.relkind = 'S'
join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) a
where d.classid = 'pg_class'::regclass and d.refclassid = 'pg_class'::regclass and d.refobjid = any(%(oids)s)
  and d.deptype in ('a', 'i')
order by 1, 2, 3, 4
"""

# A NULL proacl means the default: EXECUTE for PUBLIC.
FUNCTION_GRANTS = """
select p.oid::regprocedure::text, case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
       a.privilege_type
from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
where p.oid = any(%(oids)s)
order by 1, 2, 3
"""

ROLES = "select rolname from pg_roles"
# Columns X_id beside a column X_type in one table of a user schema, of the legacy key's type, that no foreign key
# covers: a polymorphic reference (Rails' owner_id and owner_type) may hold legacy ids.
UNTYPED_REFERENCES = """
select pg_catalog.format('%%I.%%I', n.nspname, c.relname), a.attname, t.attname
from pg_attribute a
join pg_class c on c.oid = a.attrelid and c.relkind in ('r', 'p') and not c.relispartition
join pg_namespace n on n.oid = c.relnamespace
join pg_attribute t on t.attrelid = a.attrelid and t.attname = left(a.attname, -3) || '_type' and not t.attisdropped
where a.attname ~ '_id$' and a.attnum > 0 and not a.attisdropped
  and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_'
  and n.nspname <> %(private)s
  and format_type(a.atttypid, a.atttypmod) = %(key_type)s
  and not exists (select 1 from pg_constraint k where k.conrelid = a.attrelid and k.contype = 'f'
                  and a.attnum = any(k.conkey))
order by 1, 2
"""

SCHEMAS = "select nspname from pg_namespace"
SERVER = ("select current_database(), current_setting('server_version_num')::int, "
          "to_char(clock_timestamp() at time zone 'utc', 'YYYYMMDD\"T\"HH24MISS\"Z\"'), current_user")

# -- partitioned dependents -------------------------------------------------------------------------

# Foreign keys that a partition inherited from its partitioned parent (conparentid <> 0): the parent's
# constraint is the reference; these are its per-partition clones.
INHERITED_FOREIGN_KEYS = """
select con.conrelid, con.conname, pc.conname
from pg_constraint con join pg_constraint pc on pc.oid = con.conparentid
where con.contype = 'f' and (con.conrelid = any(%(oids)s) or con.confrelid = any(%(oids)s))
"""

# Partitioned tables among the given ones: the partition key's definition and its plain columns.
PARTITION_KEYS = """
select pt.partrelid, pg_get_partkeydef(pt.partrelid),
       array(select a.attname from unnest(pt.partattrs::int2[]) k(attnum)
             join pg_attribute a on a.attrelid = pt.partrelid and a.attnum = k.attnum)
from pg_partitioned_table pt where pt.partrelid = any(%(oids)s)
"""

# For each given table: the partitioned table it is a partition of (schema, name), if it is one; and
# the children of old-style inheritance (INHERITS) below it, as schemas and names.
PARTITION_FLAGS = """
select c.oid,
       (select array[pn.nspname::text, pc.relname::text] from pg_inherits h
        join pg_class pc on pc.oid = h.inhparent join pg_namespace pn on pn.oid = pc.relnamespace
        where h.inhrelid = c.oid and c.relispartition),
       array(select cn.nspname::text from pg_inherits h join pg_class cc on cc.oid = h.inhrelid
             join pg_namespace cn on cn.oid = cc.relnamespace where h.inhparent = c.oid and c.relkind = 'r'
             order by cn.nspname, cc.relname),
       array(select cc.relname::text from pg_inherits h join pg_class cc on cc.oid = h.inhrelid
             join pg_namespace cn on cn.oid = cc.relnamespace where h.inhparent = c.oid and c.relkind = 'r'
             order by cn.nspname, cc.relname),
       -- an inheritance child's columns it has from its parents (INHERITS, not a partition)
       array(select a.attname::text from pg_attribute a where a.attrelid = c.oid and a.attnum > 0
             and not a.attisdropped and a.attinhcount > 0 and not c.relispartition order by a.attnum),
       (select string_agg(format('%%I.%%I', pn.nspname, pc.relname), ', ' order by pn.nspname, pc.relname)
        from pg_inherits h join pg_class pc on pc.oid = h.inhparent join pg_namespace pn on pn.oid = pc.relnamespace
        where h.inhrelid = c.oid and not c.relispartition)
from pg_class c where c.oid = any(%(oids)s)
"""

# Every partition below each given root, top-down, with its parent.
PARTITION_TREE = """
select r.root, t.relid::oid, t.parentrelid::oid, t.isleaf, t.level
from unnest(%(oids)s::oid[]) as r(root), lateral pg_partition_tree(r.root) t
where t.level > 0
order by r.root, t.level, t.relid
"""

# Indexes of the given partitions attached to an index of their parent.
INDEX_PARENTS = """
select i.indrelid, ic.relname, pc.relname
from pg_index i
join pg_class ic on ic.oid = i.indexrelid
join pg_inherits h on h.inhrelid = i.indexrelid
join pg_class pc on pc.oid = h.inhparent
where i.indrelid = any(%(oids)s)
"""

# -- what depends on the legacy key (planning/shapes.py) ----------------------------------------------

# Primary key, unique, check and exclusion constraints of the given tables: columns, definition, the index
# behind a key, a check's expression, and the foreign keys (of any table) that reference a key.
TABLE_CONSTRAINTS = """
select con.conrelid, con.conname, con.contype,
       array(select a.attname from unnest(con.conkey) with ordinality as k(attnum, ord)
             join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum order by k.ord),
       pg_get_constraintdef(con.oid), con.convalidated, coalesce(ic.relname, ''),
       coalesce(pg_get_expr(con.conbin, con.conrelid), ''),
       array(select format('%%s.%%s', f.conrelid::regclass, f.conname) from pg_constraint f
             where f.contype = 'f' and f.conindid = con.conindid and con.contype in ('p', 'u') order by 1)
from pg_constraint con
left join pg_class ic on ic.oid = con.conindid and con.contype in ('p', 'u', 'x')
where con.conrelid = any(%(oids)s) and con.contype in ('c', 'p', 'u', 'x')
order by con.conname
"""

# Roles whose privileges the connected role has (a superuser has every role's): USAGE, not MEMBER, since a member
# that does not inherit (a NOINHERIT role; on 16 a grant WITH INHERIT FALSE, as a CREATEROLE role gets for the roles
# it creates) may not ALTER what such a role owns.
USER_ROLES = "select rolname from pg_roles where pg_has_role(current_user, oid, 'USAGE')"
# Roles the connected role is a member of, inheriting or not.
USER_MEMBER_ROLES = "select rolname from pg_roles where pg_has_role(current_user, oid, 'MEMBER')"
# Roles it may SET ROLE to: from 16 a grant may withhold it (WITH SET FALSE); before, every member may.
USER_SET_ROLES = "select rolname from pg_roles where pg_has_role(current_user, oid, 'SET')"
USER_INHERITS = "select rolinherit from pg_roles where rolname = current_user"
# Schemas it may create objects in.
USER_CREATE_SCHEMAS = "select nspname from pg_namespace where has_schema_privilege(oid, 'CREATE')"

# Triggers on other tables than the canonical one whose function's code inserts into it.
CANONICAL_WRITERS = """
select t.tgname, format('%%I.%%I', n.nspname, c.relname), p.oid::regprocedure::text, p.prosrc
from pg_trigger t
join pg_class c on c.oid = t.tgrelid
join pg_namespace n on n.oid = c.relnamespace
join pg_proc p on p.oid = t.tgfoid
where not t.tgisinternal and t.tgrelid <> %(canonical)s and t.tgenabled <> 'D'
  and """ + _CODE_MATCHES + """
order by 2, 1
"""
