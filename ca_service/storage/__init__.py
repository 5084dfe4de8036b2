"""The store: tables, repositories returning domain records, the unit of work and the
migrations. The only place SQL is written."""
