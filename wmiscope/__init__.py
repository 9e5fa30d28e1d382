"""wmiscope: an MS-WMI wire-protocol dissector and traffic analyzer.

The code lives in two sub-packages mapped from the repository's folders:
wmiscope.formats (formats/) and wmiscope.dissectors (dissectors/).
"""

__version__ = "0.1.0"
