"""What a nexusd daemon supports, for SQLAlchemy's dialect compliance suite.

SQLAlchemy's `SuiteRequirements` closes most features by default; each
backend opens what it has. nexusd serves SQLite (3.51, JSON, math functions,
window functions, RETURNING, generated columns), so everything SQLite has is
open here, and closed only:

- what SQLite itself lacks (sequences, schemas as a server object, identity
  columns, FETCH FIRST, time zones, arrays, two-phase commit, ...);
- what the daemon refuses by design: ATTACH (so no `test_schema`), and TEMP
  tables and views, which on a connection every client shares would be every
  client's.

docs/sqlalchemy-compliance.md lists every skipped test and its reason;
`python/compliance/run.sh` regenerates it.
"""

from sqlalchemy.testing import exclusions
from sqlalchemy.testing.requirements import SuiteRequirements

open_ = exclusions.open
closed = exclusions.closed


class Requirements(SuiteRequirements):
    # --- refused by the daemon, by design -----------------------------------

    @property
    def schemas(self):
        # The suite's `test_schema` is an ATTACHed file; a daemon serves one.
        return closed()

    @property
    def temporary_tables(self):
        return closed()

    @property
    def temp_table_reflection(self):
        return closed()

    @property
    def temp_table_names(self):
        return closed()

    @property
    def has_temp_table(self):
        return closed()

    @property
    def temporary_views(self):
        return closed()

    @property
    def create_temp_table_as(self):
        return closed()

    # --- what SQLite has: open -----------------------------------------------

    @property
    def create_table_as(self):
        return open_()

    @property
    def regexp_match(self):
        # pysqlite registers a Python REGEXP on each connection; the daemon
        # brings its own (Python re's syntax without look-around).
        return open_()

    @property
    def table_ddl_if_exists(self):
        return open_()

    @property
    def index_ddl_if_exists(self):
        return open_()

    @property
    def views(self):
        return open_()

    @property
    def view_reflection(self):
        return open_()

    @property
    def view_column_reflection(self):
        return open_()

    @property
    def reflects_pk_names(self):
        return open_()

    @property
    def reflect_table_options(self):
        # SQLAlchemy's SQLite dialect reflects WITHOUT ROWID and STRICT.
        return open_()

    @property
    def repeated_column_foreign_keys(self):
        return open_()

    @property
    def foreign_key_constraint_option_reflection_ondelete(self):
        return open_()

    @property
    def fk_constraint_option_reflection_ondelete_restrict(self):
        return open_()

    @property
    def fk_constraint_option_reflection_ondelete_noaction(self):
        return open_()

    @property
    def foreign_key_constraint_option_reflection_onupdate(self):
        return open_()

    @property
    def fk_constraint_option_reflection_onupdate_restrict(self):
        return open_()

    @property
    def check_constraint_reflection(self):
        return open_()

    @property
    def inline_check_constraint_reflection(self):
        return open_()

    @property
    def indexes_with_expressions(self):
        return open_()

    @property
    def boolean_col_expressions(self):
        return open_()

    @property
    def nullsordering(self):
        return open_()

    @property
    def intersect(self):
        return open_()

    @property
    def except_(self):
        return open_()

    @property
    def window_functions(self):
        return open_()

    @property
    def window_range(self):
        return open_()

    @property
    def window_range_numeric(self):
        return open_()

    @property
    def ctes(self):
        return open_()

    @property
    def ctes_with_update_delete(self):
        return open_()

    @property
    def ctes_with_values(self):
        return open_()

    @property
    def tuple_in(self):
        return open_()

    @property
    def emulated_lastrowid(self):
        return open_()

    @property
    def dbapi_lastrowid(self):
        return open_()

    @property
    def nvarchar_types(self):
        return open_()

    @property
    def unicode_ddl(self):
        return open_()

    @property
    def datetime_historic(self):
        return open_()

    @property
    def date_historic(self):
        return open_()

    @property
    def timestamp_microseconds(self):
        return open_()

    @property
    def isolation_level(self):
        return open_()

    @property
    def autocommit(self):
        return open_()

    def get_isolation_levels(self, config):
        return {"default": "SERIALIZABLE", "supported": {"SERIALIZABLE", "AUTOCOMMIT"}}

    @property
    def savepoints(self):
        # Unlike pysqlite, nexusd lets SQLAlchemy run real savepoints.
        return open_()

    @property
    def json_type(self):
        return open_()

    @property
    def legacy_unconditional_json_extract(self):
        return open_()

    @property
    def infinity_floats(self):
        return open_()

    @property
    def update_from(self):
        return open_()

    @property
    def mod_operator_as_percent_sign(self):
        return open_()

    @property
    def order_by_label_with_expression(self):
        return open_()

    @property
    def server_defaults(self):
        return open_()

    @property
    def expression_server_defaults(self):
        return open_()

    @property
    def computed_columns(self):
        return open_()

    @property
    def computed_columns_stored(self):
        return open_()

    @property
    def computed_columns_virtual(self):
        return open_()

    @property
    def computed_columns_reflect_persisted(self):
        return open_()

    @property
    def aggregate_order_by(self):
        return open_()

    @property
    def supports_bitwise_or(self):
        return open_()

    @property
    def supports_bitwise_and(self):
        return open_()

    @property
    def supports_bitwise_not(self):
        return open_()

    @property
    def supports_bitwise_shift(self):
        return open_()

    @property
    def async_dialect(self):
        return exclusions.only_if(lambda config: config.db.dialect.is_async,
                                  "the sync dialect")

    @property
    def indexes_check_column_order(self):
        return open_()

    @property
    def repeated_remote_col_foreign_keys(self):
        return open_()

    @property
    def datetime_literals(self):
        return open_()

    @property
    def skip_autocommit_rollback(self):
        return open_()

    @property
    def float_or_double_precision_behaves_generically(self):
        return open_()

    def get_order_by_collation(self, config):
        return "NOCASE"

    # --- what SQLite lacks, though SuiteRequirements opens it -----------------

    @property
    def implicitly_named_constraints(self):
        # SQLite keeps an unnamed constraint unnamed.
        return closed()

    @property
    def parens_in_union_contained_select_w_limit_offset(self):
        # SQLite's grammar has no parenthesized SELECT in a compound one.
        return closed()

    @property
    def parens_in_union_contained_select_wo_limit_offset(self):
        return closed()


def _named(name, value):
    """A closed requirement's skip reason is SuiteRequirements' bare "marked
    as skip"; name the requirement instead, and say why (`WHY`)."""
    if isinstance(value, exclusions.compound) and not value.fails and value.skips and all(
        isinstance(p, exclusions.BooleanPredicate) and p.value for p in value.skips
    ):
        return exclusions.skip_if(lambda: True, f"requirement {name}: {WHY.get(name, '?')}")
    return value


#: Why each requirement that stays closed is closed: SQLite lacks it, the
#: daemon refuses it by design, or (said so) SQLAlchemy's SQLite dialect
#: does not implement it on any driver.
WHY = {
    "schemas": "by design: schemas are ATTACHed files in SQLite, and nexusd refuses ATTACH",
    "percent_schema_names": "by design: needs a schema (ATTACH)",
    "default_schema_name_switch": "by design: needs a schema (ATTACH)",
    "temporary_tables": "by design: TEMP objects are refused on the daemon's shared connection",
    "temp_table_reflection": "by design: TEMP objects are refused",
    "temp_table_names": "by design: TEMP objects are refused",
    "has_temp_table": "by design: TEMP objects are refused",
    "temporary_views": "by design: TEMP objects are refused",
    "create_temp_table_as": "by design: TEMP objects are refused",
    "cross_schema_fk_reflection": "by design: needs a schema (ATTACH)",
    "schema_create_delete": "SQLite has no CREATE SCHEMA",
    "comment_reflection": "SQLite has no table or column comments",
    "comment_reflection_full_unicode": "SQLite has no table or column comments",
    "uuid_data_type": "SQLite has no native UUID type",
    "identity_columns": "SQLite has no GENERATED AS IDENTITY",
    "datetime_interval": "SQLite has no INTERVAL type",
    "datetime_timezone": "SQLite has no time zone-aware datetime type",
    "datetime_timezone_historic": "SQLite has no time zone-aware datetime type",
    "time_timezone": "SQLite has no time zone-aware time type",
    "array_type": "SQLite has no ARRAY type",
    "regexp_replace": "SQLite has no regexp_replace function",
    "fetch_first": "SQLite has no FETCH FIRST (LIMIT works)",
    "fetch_ties": "SQLite has no FETCH ... WITH TIES",
    "fetch_percent": "SQLite has no FETCH ... PERCENT",
    "fetch_no_order_by": "SQLite has no FETCH FIRST",
    "fetch_expression": "SQLite has no FETCH FIRST",
    "fetch_offset_with_options": "SQLite has no FETCH FIRST",
    "materialized_views": "SQLite has no materialized views",
    "create_or_replace_view": "SQLite has no CREATE OR REPLACE VIEW",
    "precision_numerics_many_significant_digits": "SQLite stores NUMERIC as 64-bit float",
    "precision_numerics_retains_significant_digits": "SQLite stores NUMERIC as 64-bit float",
    "parens_in_union_contained_select_w_limit_offset":
        "SQLite's grammar has no parenthesized SELECT inside a compound SELECT",
    "parens_in_union_contained_select_wo_limit_offset":
        "SQLite's grammar has no parenthesized SELECT inside a compound SELECT",
    "supports_bitwise_xor": "SQLite has no XOR operator",
    "window_range_non_numeric": "SQLite's RANGE frames take only numeric offsets",
    "table_value_constructor": "SQLite's VALUES cannot be aliased with column names",
    "delete_from": "SQLite has no DELETE ... USING",
    "index_reflects_included_columns": "SQLite indexes have no INCLUDE columns",
    "reflect_tables_no_columns": "SQLite tables need at least one column",
    "column_collation_reflection":
        "SQLAlchemy's SQLite dialect does not reflect column collations, on any driver",
    "reflect_indexes_with_expressions":
        "SQLAlchemy's SQLite dialect skips expression indexes on reflection, on every driver",
}

_getattribute = Requirements.__getattribute__
Requirements.__getattribute__ = lambda self, name: _named(name, _getattribute(self, name))
