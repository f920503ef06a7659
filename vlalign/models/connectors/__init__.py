"""Connector registry. Importing this package registers every built-in connector."""

from vlalign.models.connectors import patch, query  # noqa: F401  (register linear, mlp2x_gelu, avgpool, qformer, xformer)
from vlalign.models.connectors.base import (CONNECTORS, Connector, ConnectorOptions, ConnectorOutput, build_connector,
                                            connector_class, connector_options, register_connector)
from vlalign.models.connectors.patch import AvgPoolConnector, LinearConnector, MLPConnector, PatchConnector
from vlalign.models.connectors.query import QFormerConnector, XFormerConnector

__all__ = ["CONNECTORS", "AvgPoolConnector", "Connector", "ConnectorOptions", "ConnectorOutput", "LinearConnector",
           "MLPConnector", "PatchConnector", "QFormerConnector", "XFormerConnector", "build_connector",
           "connector_class", "connector_options", "register_connector"]
