"""Automatic strength: the scale each edit gets (``strength``) and the rival answers its landed check weighs
(``rivals``)."""
